"""The aclInit configuration file, checked as CANN checks it (client.init_config)."""

from __future__ import annotations

import pytest

from client.init_config import MAX_NESTING, config_error
from core.errors import ACL_ERROR_INVALID_FILE, ACL_ERROR_PARSE_FILE, ACL_SUCCESS


@pytest.mark.parametrize("path", [None, ""])
def test_no_path_means_no_configuration(path) -> None:
    assert config_error(path) == (ACL_SUCCESS, "")


@pytest.mark.parametrize(
    ("content", "code"),
    [
        ("{}", ACL_SUCCESS),
        ("  {\n}\n", ACL_SUCCESS),
        ('{"dump": {"dump_list": []}, "err_msg_mode": "1"}', ACL_SUCCESS),
        ("[]", ACL_SUCCESS),
        ("", ACL_SUCCESS),  # an empty file is no configuration
        ("{} trailing", ACL_SUCCESS),  # the first JSON value is read, the rest ignored
        ("   ", ACL_ERROR_PARSE_FILE),
        ("{", ACL_ERROR_PARSE_FILE),
        ("not json", ACL_ERROR_PARSE_FILE),
        ("{'single': 'quotes'}", ACL_ERROR_PARSE_FILE),
        ("{" * (MAX_NESTING + 1) + "}" * (MAX_NESTING + 1), ACL_ERROR_PARSE_FILE),
        ('{"a": "' + "[" * (MAX_NESTING + 1) + '"}', ACL_ERROR_PARSE_FILE),  # counted in text
    ],
)
def test_file_contents(tmp_path, content: str, code: int) -> None:
    path = tmp_path / "acl.json"
    path.write_text(content)
    found, reason = config_error(str(path))
    assert found == code, reason
    assert bool(reason) == bool(code)


def test_nesting_at_the_limit_is_fine(tmp_path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"a":' * (MAX_NESTING - 1) + "{}" + "}" * (MAX_NESTING - 1))
    assert config_error(str(path))[0] == ACL_SUCCESS


def test_missing_path_directory_and_dangling_link_are_invalid_files(tmp_path) -> None:
    assert config_error(str(tmp_path / "missing.json"))[0] == ACL_ERROR_INVALID_FILE
    assert config_error(str(tmp_path))[0] == ACL_ERROR_INVALID_FILE
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "gone.json")
    assert config_error(str(link))[0] == ACL_ERROR_INVALID_FILE


def test_a_link_to_a_good_file_is_fine(tmp_path) -> None:
    target = tmp_path / "real.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert config_error(str(link)) == (ACL_SUCCESS, "")


def test_a_file_over_10_mib_is_an_invalid_file(tmp_path) -> None:
    path = tmp_path / "big.json"
    with open(path, "wb") as handle:
        handle.truncate(10 * 1024 * 1024 + 1)
    assert config_error(str(path))[0] == ACL_ERROR_INVALID_FILE

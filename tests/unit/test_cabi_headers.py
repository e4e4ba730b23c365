"""The AscendCL headers compile cleanly as C99 and C++11 (together and one by one), and the values
a compiler sees are the values the Python side uses."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cabi import symbols

GCC = shutil.which("gcc")
GXX = shutil.which("g++")

STRICT = ["-Wall", "-Wextra", "-Werror"]
C99 = [GCC or "gcc", "-std=c99", *STRICT]
CXX11 = [GXX or "g++", "-std=c++11", *STRICT]

ALL_HEADERS = """\
#include "acl/acl.h"
#define ENABLE_DVPP_INTERFACE
#include "acl/ops/acl_dvpp.h"
#include "acl/ops/acl_cblas.h"
"""


def include_dir() -> Path:
    root = Path(str(symbols.include_root()))
    assert (root / "acl" / "acl.h").is_file()
    return root


def compile_source(tmp_path: Path, source: str, command: list[str], suffix: str, *extra: str):
    path = tmp_path / f"probe{suffix}"
    path.write_text(source)
    return subprocess.run(
        [*command, f"-I{include_dir()}", *extra, str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )


@pytest.mark.parametrize("command, suffix", [(C99, ".c"), (CXX11, ".cpp")], ids=["c99", "c++11"])
def test_all_headers_together(tmp_path, command, suffix):
    result = compile_source(tmp_path, ALL_HEADERS, command, suffix, "-fsyntax-only")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("header", symbols.header_paths())
@pytest.mark.parametrize("command, suffix", [(C99, ".c"), (CXX11, ".cpp")], ids=["c99", "c++11"])
def test_each_header_alone(tmp_path, header, command, suffix):
    source = f'#define ENABLE_DVPP_INTERFACE\n#include "{header}"\n'
    result = compile_source(tmp_path, source, command, suffix, "-fsyntax-only")
    assert result.returncode == 0, result.stderr


def test_dvpp_header_demands_opt_in(tmp_path):
    result = compile_source(tmp_path, '#include "acl/ops/acl_dvpp.h"\n', C99, ".c", "-fsyntax-only")
    assert result.returncode != 0
    assert "ENABLE_DVPP_INTERFACE" in result.stderr


def test_macros_work_in_c_and_cpp(tmp_path):
    """ACL_APP_LOG expands, dim3 builds CUDA-style in C++, deprecated calls draw a warning."""
    use = (
        '#include "acl/acl.h"\n'
        'void log_it(int n) { ACL_APP_LOG(ACL_INFO, "n=%d", n); ACL_APP_LOG(ACL_ERROR, "x"); }\n'
    )
    assert compile_source(tmp_path, use, C99, ".c", "-fsyntax-only").returncode == 0
    cxx = use + "void grid(void) { dim3 g(4); dim3 b(2, 2); (void)g; (void)b; }\n"
    result = compile_source(tmp_path, cxx, CXX11, ".cpp", "-fsyntax-only")
    assert result.returncode == 0, result.stderr
    old = (
        '#include "acl/acl.h"\n'
        "int q(aclrtEvent e, aclrtEventStatus *s) { return aclrtQueryEvent(e, s); }\n"
    )
    result = compile_source(tmp_path, old, C99, ".c", "-fsyntax-only")
    assert result.returncode != 0 and "aclrtQueryEventStatus" in result.stderr


def run_program(tmp_path: Path, body: str) -> str:
    source = f"#include <stdio.h>\n{ALL_HEADERS}int main(void) {{\n{body}return 0;\n}}\n"
    exe = tmp_path / "probe"
    result = compile_source(
        tmp_path, source, C99, ".c", "-Wno-deprecated-declarations", "-o", str(exe)
    )
    assert result.returncode == 0, result.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, check=True)
    return run.stdout


def test_compiled_values_match_the_parser_and_python(tmp_path):
    values = symbols.constants()
    body = "".join(
        f'printf("%s %llu\\n", "{name}", (unsigned long long)({name}));\n' for name in values
    )
    body += 'printf("sizeof_dim3 %zu\\n", sizeof(dim3));\n'
    body += 'printf("sizeof_aclmdlIODims %zu\\n", sizeof(aclmdlIODims));\n'
    seen = dict(line.split() for line in run_program(tmp_path, body).splitlines())
    for name, value in values.items():
        assert int(seen[name]) == value % 2**64, name
    assert int(seen["ACL_ERROR_RT_STREAM_SYNC_TIMEOUT"]) == 507046
    assert int(seen["ACL_FLOAT16"]) == 1
    assert int(seen["ACL_MEMCPY_HOST_TO_DEVICE"]) == 1
    assert int(seen["ACL_MEM_MALLOC_HUGE_FIRST"]) == 0
    assert int(seen["sizeof_dim3"]) == 12
    assert int(seen["sizeof_aclmdlIODims"]) == 128 + 8 + 128 * 8


def test_compiled_error_codes_match_core_errors(tmp_path):
    import core.errors

    python_codes = {
        name: value
        for name, value in vars(core.errors).items()
        if name.startswith("ACL_") and isinstance(value, int)
    }
    body = "".join(f'printf("%s %d\\n", "{name}", (int)({name}));\n' for name in python_codes)
    seen = {
        name: int(value)
        for name, value in (line.split() for line in run_program(tmp_path, body).splitlines())
    }
    assert seen == python_codes

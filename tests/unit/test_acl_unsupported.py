"""Calls npufarm does not emulate return 'feature unsupported' (logged once), never raise."""

from __future__ import annotations

import logging

import pytest

import acl
from core.errors import ACL_ERROR_FEATURE_UNSUPPORTED


def test_unknown_calls_return_feature_unsupported_and_log_once(caplog):
    caplog.set_level(logging.WARNING, logger="acl._facade")
    assert acl.rt.set_op_wait_timeout_for_test(5) == ACL_ERROR_FEATURE_UNSUPPORTED
    assert acl.rt.set_op_wait_timeout_for_test(6) == ACL_ERROR_FEATURE_UNSUPPORTED
    assert acl.mdl.set_dynamic_batch_size_for_test(1, 2, 3, 4) == ACL_ERROR_FEATURE_UNSUPPORTED
    assert acl.some_top_level_call_for_test() == ACL_ERROR_FEATURE_UNSUPPORTED
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("acl.rt.set_op_wait_timeout_for_test" in w for w in warnings) == 1
    assert any("acl.mdl.set_dynamic_batch_size_for_test" in w for w in warnings)


def test_private_names_and_known_calls_are_untouched():
    with pytest.raises(AttributeError):
        acl.rt._not_public  # noqa: B018
    assert not getattr(acl.rt.malloc, "unsupported", False)
    assert acl.rt.malloc.__name__ == "malloc"
    assert "bytes_to_ptr" in dir(acl.util)  # samples feature-detect like this
    assert not hasattr(acl.util, "no_such_helper")


def test_unemulated_submodules_and_tuple_shaped_calls():
    """``acl.media`` (DVPP) and friends exist, as in pyACL; their calls, and unknown calls with
    pyACL's ``(value, ret)`` shape, give 200006 both as a return code and when unpacked."""
    import acl.media  # noqa: F401  (a sample may import it explicitly)

    ret = acl.media.dvpp_create_channel_desc_for_test()
    assert ret == ACL_ERROR_FEATURE_UNSUPPORTED and ret != 0
    buffer, ret = acl.media.dvpp_malloc_for_test(1024)
    assert (buffer, ret) == (0, ACL_ERROR_FEATURE_UNSUPPORTED)
    value, ret = acl.rt.get_device_capability_for_test(0, 1)
    assert (value, ret) == (0, ACL_ERROR_FEATURE_UNSUPPORTED)
    for module in (acl.op, acl.prof, acl.himpi):
        assert module.some_call_for_test() == ACL_ERROR_FEATURE_UNSUPPORTED
    assert "dvpp_malloc_for_test" not in dir(acl.media)

"""Skipping the sync fails deterministically: poisoned outputs (or stale ones) with ret 0."""

from __future__ import annotations

import numpy as np
import pytest

from tests.system.conftest import CI_CONFIG, MODELS, start_farm, stop_and_check

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

H2D, D2H = 1, 2


def _config(tmp_path, mode: str):
    path = tmp_path / f"{mode}.toml"
    text = CI_CONFIG.read_text()
    text = text.replace('skip_sync = "poison"', f'skip_sync = "{mode}"')
    text = text.replace("[cards]", "min_completion_delay_s = 0.2\n\n[cards]")
    path.write_text(text)
    return path


@pytest.mark.parametrize("mode", ["poison", "stale"])
def test_read_without_sync_sees_poison_or_stale_bytes_every_time(tmp_path, acl_on, mode):
    farm = start_farm(cards=1, config=_config(tmp_path, mode))
    try:
        with acl_on(farm) as acl:
            assert acl.rt.set_device(0) == 0
            stream, _ = acl.rt.create_stream()
            model_id, ret = acl.mdl.load_from_file(str(MODELS / "matmul.toml"))
            assert ret == 0
            n = 256 * 4
            d_in, _ = acl.rt.malloc(n, 0)
            d_out, _ = acl.rt.malloc(n, 0)
            old = np.full(256, 7.0, np.float32)
            assert acl.rt.memcpy(d_out, n, acl.util.numpy_to_ptr(old), n, H2D) == 0
            inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
            acl.mdl.add_dataset_buffer(inputs, acl.create_data_buffer(d_in, n))
            acl.mdl.add_dataset_buffer(outputs, acl.create_data_buffer(d_out, n))
            y = np.empty(256, np.float32)
            for step in range(5):  # every run, not one in a thousand
                x = np.random.default_rng(step).standard_normal(256).astype(np.float32)
                assert acl.rt.memcpy(d_in, n, acl.util.numpy_to_ptr(x), n, H2D) == 0
                assert acl.mdl.execute_async(model_id, inputs, outputs, stream) == 0
                # the bug under test: reading the output without synchronizing the stream
                assert acl.rt.memcpy(acl.util.numpy_to_ptr(y), n, d_out, n, D2H) == 0
                if mode == "poison":
                    assert np.isnan(y).all()
                else:
                    assert np.array_equal(y, old), "stale mode: the bytes from before"
                assert acl.rt.synchronize_stream(stream) == 0
                assert acl.rt.memcpy(acl.util.numpy_to_ptr(y), n, d_out, n, D2H) == 0
                assert not np.isnan(y).any() and not np.array_equal(y, old)
                old = y.copy()
            assert acl.rt.reset_device(0) == 0
    finally:
        stop_and_check(farm)


def test_poison_spares_buffers_a_pending_task_still_reads(tmp_path, acl_on):
    """A pipeline A -> B on one stream, then A again: the second A must not poison the buffer B
    has not read yet, or a correct program would get wrong results."""
    farm = start_farm(cards=1, config=_config(tmp_path, "poison"))
    try:
        with acl_on(farm) as acl:
            assert acl.rt.set_device(0) == 0
            stream, _ = acl.rt.create_stream()
            scale_id, _ = acl.mdl.load_from_file(str(MODELS / "identity.toml"))
            n = 1024 * 4
            a, b, c = (acl.rt.malloc(n, 0)[0] for _ in range(3))
            x = np.arange(1024, dtype=np.float32)
            acl.rt.memcpy(a, n, acl.util.numpy_to_ptr(x), n, H2D)

            def dataset(ptr):
                ds = acl.mdl.create_dataset()
                acl.mdl.add_dataset_buffer(ds, acl.create_data_buffer(ptr, n))
                return ds

            d = acl.rt.malloc(n, 0)[0]
            assert acl.mdl.execute_async(scale_id, dataset(a), dataset(b), stream) == 0  # b = a
            assert acl.rt.synchronize_stream(stream) == 0  # b now holds real data
            assert acl.mdl.execute_async(scale_id, dataset(a), dataset(d), stream) == 0  # busy
            assert acl.mdl.execute_async(scale_id, dataset(b), dataset(c), stream) == 0  # c = b
            assert acl.mdl.execute_async(scale_id, dataset(a), dataset(b), stream) == 0  # b = a
            assert acl.rt.synchronize_stream(stream) == 0
            out = np.empty_like(x)
            acl.rt.memcpy(acl.util.numpy_to_ptr(out), n, c, n, D2H)
            np.testing.assert_array_equal(out, x)
            assert acl.rt.reset_device(0) == 0
    finally:
        stop_and_check(farm)


def test_poison_is_decided_per_byte_range_in_an_arena(tmp_path, acl_on):
    """One malloc split into regions (an arena): an output next to an input, in the same
    allocation, is poisoned; a region a pending task still reads is spared, wherever it is."""
    farm = start_farm(cards=1, config=_config(tmp_path, "poison"))
    try:
        with acl_on(farm) as acl:
            assert acl.rt.set_device(0) == 0
            stream, _ = acl.rt.create_stream()
            identity, _ = acl.mdl.load_from_file(str(MODELS / "identity.toml"))
            n = 1024 * 4
            arena, _ = acl.rt.malloc(4 * n, 0)
            a, b, c, d = (arena + i * n for i in range(4))

            def dataset(ptr):
                ds = acl.mdl.create_dataset()
                acl.mdl.add_dataset_buffer(ds, acl.create_data_buffer(ptr, n))
                return ds

            x = np.arange(1024, dtype=np.float32)
            assert acl.rt.memcpy(a, n, acl.util.numpy_to_ptr(x), n, H2D) == 0
            assert acl.rt.memcpy(b, n, acl.util.numpy_to_ptr(x), n, H2D) == 0
            out = np.empty_like(x)
            assert acl.mdl.execute_async(identity, dataset(a), dataset(d), stream) == 0
            # the bug under test: reading the output region of the arena without a sync
            assert acl.rt.memcpy(acl.util.numpy_to_ptr(out), n, d, n, D2H) == 0
            assert np.isnan(out).all(), "the output region is poisoned, its input neighbour not"
            assert acl.rt.synchronize_stream(stream) == 0
            # a pipeline inside the arena: b is read by a pending task, then written again
            assert acl.mdl.execute_async(identity, dataset(a), dataset(d), stream) == 0  # busy
            assert acl.mdl.execute_async(identity, dataset(b), dataset(c), stream) == 0  # c = b
            assert acl.mdl.execute_async(identity, dataset(a), dataset(b), stream) == 0  # b = a
            assert acl.rt.synchronize_stream(stream) == 0
            assert acl.rt.memcpy(acl.util.numpy_to_ptr(out), n, c, n, D2H) == 0
            np.testing.assert_array_equal(out, x)
            assert acl.rt.reset_device(0) == 0
    finally:
        stop_and_check(farm)

"""The server's wire_parts kernel against the numpy reference in trainer_client.wire."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sampler_server.kernels.mask import IGNORE_INDEX
from sampler_server.kernels.wire_parts import wire_parts as kernel
from trainer_client import wire


def random_batch(rng: np.random.Generator, B: int, L: int, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    labels = np.where(rng.random((B, L)) < ratio, rng.integers(0, 256_000, (B, L)), IGNORE_INDEX).astype(np.int32)
    cu = [0]
    for b in range(B):
        cuts = np.sort(rng.choice(np.arange(1, L), size=min(L - 1, int(rng.integers(0, 6))), replace=False))
        cu += [b * L + int(c) for c in cuts] + [(b + 1) * L]
    return labels, np.array(cu, np.int32)


@pytest.mark.parametrize("L", [1, 31, 32, 33, 100, 1024])
@pytest.mark.parametrize("ratio", [0.0, 0.15, 0.3, 1.0])
def test_kernel_equals_the_numpy_reference(L: int, ratio: float) -> None:
    rng = np.random.default_rng(L * 10 + int(ratio * 10))
    for B in (1, 3, 8):
        labels, cu = random_batch(rng, B, L, ratio)
        got = kernel(labels, cu)
        want = wire.wire_parts(labels, cu)
        assert len(got) == len(want) == 5
        for name, g, w in zip(("doc_off", "doc_pos", "mask_off", "mask_pos", "mask_label"), got, want):
            assert g.dtype == np.int32, name
            np.testing.assert_array_equal(g, w, err_msg=f"{name} B={B} L={L} ratio={ratio}")
        # The parts rebuild the dense labels exactly.
        dense = np.full_like(labels, IGNORE_INDEX)
        _, _, off, pos, val = got
        for b in range(B):
            dense[b, pos[off[b] : off[b + 1]]] = val[off[b] : off[b + 1]]
        np.testing.assert_array_equal(dense, labels)


@pytest.mark.parametrize("cu, message", [
    ([0, 64], "rise strictly"),  # ends short of B*L = 128
    ([1, 64, 128], "rise strictly"),
    ([0, 64, 64, 128], "rise strictly"),
    ([0, 70, 128], "every row start"),  # row 1 starts at 64, not in the list
    ([0, 10, 128], "every row start"),
    ([0], "rise strictly"),
])
def test_bad_cu_seqlens_are_refused_like_the_reference(cu: list[int], message: str) -> None:
    labels = np.full((2, 64), IGNORE_INDEX, np.int32)
    cu_arr = np.array(cu, np.int32)
    with pytest.raises(ValueError, match=message):
        kernel(labels, cu_arr)
    with pytest.raises(ValueError, match=message):
        wire.wire_parts(labels, cu_arr)


def test_a_record_batch_from_kernel_parts_is_the_reference_one() -> None:
    rng = np.random.default_rng(9)
    labels, cu = random_batch(rng, 4, 200, 0.3)

    class B:
        input_ids = rng.integers(0, 1000, (4, 200)).astype(np.int32)
        cu_seqlens = cu
        lang = np.array([0, 1, 1, 0], np.int32)

    B.labels = labels
    d = pa.array(["en", "fr"])
    for mode in ("sparse", "dense"):
        assert wire.to_record_batch(B, d, mode, kernel(labels, cu)).equals(wire.to_record_batch(B, d, mode))

#!/usr/bin/env python3
"""Write Tests/Fixtures/gguf/dequant.gguf: for every ggml type MoEServe computes, a [2, 512]
tensor `<TYPE>` of random blocks (float16 scale fields set to finite random values, every
other byte random) and an F32 tensor `<TYPE>.expected` holding gguf-py's numpy
dequantisation of the same bytes (gguf.quants.dequantize). The Swift test
(GGUFDequantizeTests) decodes `<TYPE>` with its own reader and kernels and compares.

    /work/venv/bin/python scripts/gguf/make_dequant_fixture.py   # needs numpy and gguf (gguf-py)
"""

from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

OUT = Path(__file__).resolve().parents[2] / "Tests/Fixtures/gguf/dequant.gguf"
ROWS, COLS = 2, 512

# Byte offsets of the float16 fields in each block.
HALF_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0], T.MXFP4: [],
}

# Byte offsets of e8m0 exponents, kept in 110...140 (well inside the range where ggml's and
# the OCP format's readings of the exponent agree; 255 is NaN in one, infinity in the other).
EXPONENT_FIELDS = {T.MXFP4: [0]}


def main() -> None:
    rng = np.random.default_rng(21)
    writer = gguf.GGUFWriter(str(OUT), arch="dequant-test")
    for qtype, fields in HALF_FIELDS.items():
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 256, size=(ROWS * COLS // block, size), dtype=np.uint8)
        for offset in EXPONENT_FIELDS.get(qtype, []):
            blocks[:, offset] = rng.integers(110, 141, size=blocks.shape[0], dtype=np.uint8)
        for offset in fields:
            halves = rng.uniform(-0.05, 0.05, size=blocks.shape[0]).astype(np.float16)
            blocks[:, offset:offset + 2] = halves.view(np.uint8).reshape(-1, 2)
        raw = blocks.reshape(ROWS, -1)
        expected = dequantize(raw, qtype).astype(np.float32).reshape(ROWS, COLS)
        writer.add_tensor(qtype.name, raw, raw_dtype=qtype)
        writer.add_tensor(qtype.name + ".expected", expected)
    f16 = rng.normal(0, 1, size=(ROWS, COLS)).astype(np.float16)
    writer.add_tensor("F16", f16)
    writer.add_tensor("F16.expected", f16.astype(np.float32))
    bf16 = (rng.normal(0, 1, size=(ROWS, COLS)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    writer.add_tensor("BF16", bf16, raw_shape=(ROWS, COLS), raw_dtype=T.BF16)
    writer.add_tensor("BF16.expected", (bf16.astype(np.uint32) << 16).view(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{OUT}: {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Rewrite a GGUF as split files NAME-0000N-of-0000M.gguf with gguf-py (as llama-gguf-split
does: `split.*` metadata in every part, tensors spread over the parts), for the split-file test.

    /work/venv/bin/python scripts/gguf/split_gguf.py IN.gguf OUT_DIR/NAME.gguf --max-tensors 12
"""

import argparse

import gguf
from gguf import GGUFValueType


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--max-tensors", type=int, default=12)
    args = parser.parse_args()
    reader = gguf.GGUFReader(args.input)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(args.output, arch=arch, split_max_tensors=args.max_tensors)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()

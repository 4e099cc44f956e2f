"""Writes a tensor-free copy of a GGUF (every metadata key, no weights): enough for llama.cpp's
vocab_only loading, i.e. its tokenizer, at a few MB. The device has no room for a real model
(carry limit), so bench/plan_speed.py chunks contexts there with the tokenizer of this copy.

    python bench/device/vocab_only_gguf.py MODEL.gguf OUT.gguf      (default MODEL: gemma-3-270m)
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf


def vocab_only_copy(src: Path, dst: Path) -> None:
    reader = gguf.GGUFReader(src)
    arch = str(reader.get_field(gguf.Keys.General.ARCHITECTURE).contents())
    writer = gguf.GGUFWriter(dst, arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    if len(sys.argv) == 3:
        src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    else:
        from cocktail_gguf.models import default_model_path

        src, dst = default_model_path(), Path(sys.argv[1])
    vocab_only_copy(src, dst)
    print(f"wrote {dst} ({dst.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Writes docs/api.md from the comments in proto/ (run by ``make docs``; a test fails when it is stale)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"

_TYPE_NAMES = {
    v: k.removeprefix("TYPE_").lower()
    for k, v in descriptor_pb2.FieldDescriptorProto.Type.items()
    if k not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
}


def _descriptors() -> descriptor_pb2.FileDescriptorSet:
    # Our own API only; the Open Inference Protocol (proto/splitinfer/inference) is documented upstream.
    files = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.glob("splitinfer/v1/*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        code = protoc.main(["protoc", f"-I{PROTO_DIR}", "--include_source_info", f"--descriptor_set_out={out}", *files])
        if code != 0:
            raise SystemExit(f"protoc failed with {code}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _comment(locations: dict[tuple[int, ...], str], path: tuple[int, ...]) -> str:
    return " ".join(line.strip() for line in locations.get(path, "").strip().splitlines()).strip()


def _field_type(field: descriptor_pb2.FieldDescriptorProto) -> str:
    name = field.type_name.rsplit(".", 1)[-1] if field.type_name else _TYPE_NAMES[field.type]
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return f"repeated {name}"
    return name


def render() -> str:
    lines = [
        "# splitinfer.v1 API reference",
        "",
        "Generated from the comments in `proto/splitinfer/v1/` by `make docs`; do not edit by hand.",
        "",
    ]
    for file in _descriptors().file:
        locations = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        lines += [f"## `{file.name}`", ""]
        for si, service in enumerate(file.service):
            lines += [f"### service `{service.name}`", "", _comment(locations, (6, si)), ""]
            for mi, method in enumerate(service.method):
                req = ("stream " if method.client_streaming else "") + method.input_type.rsplit(".", 1)[-1]
                res = ("stream " if method.server_streaming else "") + method.output_type.rsplit(".", 1)[-1]
                lines.append(f"- **{method.name}**(`{req}`) → `{res}`: {_comment(locations, (6, si, 2, mi))}")
            lines.append("")
        for ei, enum in enumerate(file.enum_type):
            lines += [f"### enum `{enum.name}`", "", _comment(locations, (5, ei)), ""]
            lines += ["| value | number | meaning |", "| --- | --- | --- |"]
            for vi, value in enumerate(enum.value):
                lines.append(f"| `{value.name}` | {value.number} | {_comment(locations, (5, ei, 2, vi))} |")
            lines.append("")
        for mi, message in enumerate(file.message_type):
            lines += [f"### message `{message.name}`", "", _comment(locations, (4, mi)), ""]
            if message.field:
                lines += ["| field | type | number | meaning |", "| --- | --- | --- | --- |"]
                for fi, field in enumerate(message.field):
                    comment = _comment(locations, (4, mi, 2, fi)).replace("|", "\\|")
                    lines.append(f"| `{field.name}` | `{_field_type(field)}` | {field.number} | {comment} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "api.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be written")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

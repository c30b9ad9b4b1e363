"""Renders docs/API.md from the comments in the protos, so the reference cannot drift.

    python scripts/protodoc.py -I protos -o docs/API.md protos/seckill/v1/*.proto

protoc (run as `make gen` runs it, scripts/protogen.py) compiles the protos into a
FileDescriptorSet with `--include_source_info`; its SourceCodeInfo holds each element's comment
under the element's path (e.g. [6, 0, 2, 1]: the file's `service` 0, its `method` 1). No protoc
plugin is involved. The output depends only on the protos: files in name order, elements in
declaration order. A field's behavior column shows its `google.api.field_behavior` options.

An RPC's access is read from the comments: "admin" when a sentence of the RPC's comment starts
with "Admin"; "user" when its service's comment says "<Rpc> is a user RPC" or "every RPC here
is a user RPC"; otherwise "anyone".
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import protogen  # scripts/, beside this file
from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2 as d

FDP = d.FieldDescriptorProto
# Field numbers in descriptor.proto, the steps of a SourceCodeInfo path.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE, FILE_SYNTAX = 4, 5, 6, 12
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE = SERVICE_METHOD = 2

SCALARS = {
    FDP.TYPE_DOUBLE: "double", FDP.TYPE_FLOAT: "float", FDP.TYPE_INT64: "int64",
    FDP.TYPE_UINT64: "uint64", FDP.TYPE_INT32: "int32", FDP.TYPE_FIXED64: "fixed64",
    FDP.TYPE_FIXED32: "fixed32", FDP.TYPE_BOOL: "bool", FDP.TYPE_STRING: "string",
    FDP.TYPE_BYTES: "bytes", FDP.TYPE_UINT32: "uint32", FDP.TYPE_SFIXED32: "sfixed32",
    FDP.TYPE_SFIXED64: "sfixed64", FDP.TYPE_SINT32: "sint32", FDP.TYPE_SINT64: "sint64",
}
WELL_KNOWN_DOCS = "https://protobuf.dev/reference/protobuf/google.protobuf/"
SourcePath = tuple[int, ...]


def compile_protos(include: str, protos: Sequence[str]) -> d.FileDescriptorSet:
    """Runs protoc (as `make gen` does) and returns the descriptor set."""
    root = Path(include).resolve()
    # protoc names a file by its path under the include folder.
    names = [str(Path(p).resolve().relative_to(root)) for p in protos]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "protos.pb"
        protogen.protoc(["--include_source_info", f"--descriptor_set_out={out}"], names, root)
        return d.FileDescriptorSet.FromString(out.read_bytes())


def file_comments(file: d.FileDescriptorProto) -> dict[SourcePath, str]:
    """Each commented element's leading and trailing comment, by path, without the `// `."""
    found = {}
    for loc in file.source_code_info.location:
        parts = [_dedent(c) for c in (loc.leading_comments, loc.trailing_comments)]
        if text := "\n\n".join(p for p in parts if p):
            found[tuple(loc.path)] = text
    return found


def _dedent(comment: str) -> str:
    return "\n".join(line.removeprefix(" ") for line in comment.split("\n")).strip()


def _one_line(text: str) -> str:
    """A comment for a table cell: lines joined, paragraphs apart by <br><br>."""
    return "<br><br>".join(" ".join(p.split()) for p in text.split("\n\n") if p.strip())


def field_behavior(fd: d.FieldDescriptorProto) -> str:
    """The field's `google.api.field_behavior` annotations (AIP-203), e.g. `REQUIRED`."""
    # field_behavior_pb2.pyi types the extension as a plain FieldDescriptor, which
    # Extensions[] does not take; at run time it is the repeated enum extension.
    behaviors: list[int] = fd.options.Extensions[
        field_behavior_pb2.field_behavior]  # type: ignore[index]
    return ", ".join(f"`{field_behavior_pb2.FieldBehavior.Name(b)}`" for b in behaviors)


def _short(full_name: str) -> str:
    """`seckill.v1.Outer.Inner` -> `Outer.Inner` (the package is `a.b`)."""
    return full_name.split(".", 2)[-1]


class Renderer:
    """Markdown for the files of one FileDescriptorSet."""

    def __init__(self, files: Sequence[d.FileDescriptorProto]) -> None:
        self.files = sorted(files, key=lambda f: f.name)
        self.comments = {f.name: file_comments(f) for f in self.files}
        # full name -> (file name, descriptor, SourceCodeInfo path), in declaration order
        self.messages: dict[str, tuple[str, d.DescriptorProto, SourcePath]] = {}
        self.enums: dict[str, tuple[str, d.EnumDescriptorProto, SourcePath]] = {}
        self.rpc_anchors: dict[str, str] = {}  # "Service.Rpc" -> anchor, linked in prose
        for file in self.files:
            for i, message in enumerate(file.message_type):
                self._collect(file.name, f"{file.package}.{message.name}", message,
                              (FILE_MESSAGE, i))
            for i, enum in enumerate(file.enum_type):
                self.enums[f"{file.package}.{enum.name}"] = (file.name, enum, (FILE_ENUM, i))
            for service in file.service:
                for method in service.method:
                    self.rpc_anchors[f"{service.name}.{method.name}"] = \
                        f"{file.package}.{service.name}.{method.name}"
        used = {fd.type_name for _, m, _ in self.messages.values() for fd in m.field} | {
            t for f in self.files for s in f.service for m in s.method
            for t in (m.input_type, m.output_type)}
        self.other_types = sorted({t.lstrip(".") for t in used if t}
                                  - self.messages.keys() - self.enums.keys())

    def _collect(self, file: str, name: str, message: d.DescriptorProto, path: SourcePath) -> None:
        self.messages[name] = (file, message, path)
        for i, nested in enumerate(message.nested_type):
            self._collect(file, f"{name}.{nested.name}", nested, (*path, MESSAGE_NESTED, i))
        for i, enum in enumerate(message.enum_type):
            self.enums[f"{name}.{enum.name}"] = (file, enum, (*path, MESSAGE_ENUM, i))

    # --- text -----------------------------------------------------------------------------

    def prose(self, text: str) -> str:
        """A comment as Markdown: `*`, `\\` and tag-like `<` escaped outside code spans, and
        `Service.Rpc` names linked to their RPC."""
        names = "|".join(map(re.escape, sorted(self.rpc_anchors, key=len, reverse=True)))
        out = []
        for part in re.split(r"(`[^`]*`)", text):
            if not part.startswith("`"):
                part = re.sub(r"([*\\]|<(?=[A-Za-z/!?]))", r"\\\1", part)
                if names:
                    part = re.sub(rf"\b({names})\b",
                                  lambda m: f"[{m[1]}](#{self.rpc_anchors[m[1]]})", part)
            out.append(part)
        return "".join(out)

    def cell(self, text: str) -> str:
        """Text for a table cell: one line, `|` escaped (code spans included, as GFM wants)."""
        return self.prose(_one_line(text)).replace("|", "\\|")

    def type_ref(self, type_name: str) -> str:
        """A message or enum as a link to its section; other packages' types plainly."""
        name = type_name.lstrip(".")
        if name in self.messages or name in self.enums:
            return f"[`{_short(name)}`](#{name})"
        return f"`{name}`"

    def map_entry(self, type_name: str) -> d.DescriptorProto | None:
        entry = self.messages.get(type_name.lstrip("."))
        return entry[1] if entry and entry[1].options.map_entry else None

    def field_type(self, fd: d.FieldDescriptorProto) -> str:
        if fd.type in SCALARS:
            return f"`{SCALARS[fd.type]}`"
        if entry := self.map_entry(fd.type_name):
            key, value = entry.field
            return f"map<{self.field_type(key)}, {self.field_type(value)}>"
        return self.type_ref(fd.type_name)

    def field_label(self, message: d.DescriptorProto, fd: d.FieldDescriptorProto) -> str:
        if fd.proto3_optional:
            return "optional"
        if fd.HasField("oneof_index"):
            return f"oneof `{message.oneof_decl[fd.oneof_index].name}`"
        if fd.label == FDP.LABEL_REPEATED:
            return "map" if self.map_entry(fd.type_name) else "repeated"
        return "required" if fd.label == FDP.LABEL_REQUIRED else ""

    @staticmethod
    def access(rpc: str, rpc_comment: str, service_comment: str) -> str:
        """Who may call an RPC, as its comments say (see the module docstring)."""
        for sentence in re.split(r"(?<=\.)\s+", " ".join(rpc_comment.split())):
            if qualified := re.match(r"Admin\b\s*(\([^)]*\))?", sentence):
                return f"admin {qualified[1]}" if qualified[1] else "admin"
        service = " ".join(service_comment.split())
        if re.search(rf"\b{rpc} is a user RPC\b|\bevery RPC here is a user RPC\b", service):
            return "user"
        return "anyone"

    # --- sections ---------------------------------------------------------------------------

    def render(self) -> str:
        packages = ", ".join(sorted({f"`{f.package}`" for f in self.files}))
        head = [
            f"# API reference: {packages}", "",
            "<!-- Generated by `make gen` (scripts/protodoc.py) from the comments in protos/. "
            "Do not edit: change the protos and run `make gen`. -->", "",
            "Generated from the comments of the protos, which are the contract. Every service "
            "also offers server reflection (`grpc.reflection.v1` and `v1alpha`) and "
            "`grpc.health.v1.Health`. An RPC's access, as its comments say: *admin* needs "
            "`authorization: Bearer <SECKILL_ADMIN_TOKEN>` metadata; *user* needs "
            "`authorization: Bearer <user token>` (or the admin token) when the services run "
            "with `SECKILL_USER_TOKEN_SECRET`; *anyone* needs nothing.",
            "",
            "A field's *behavior* is its `google.api.field_behavior` annotation "
            "([AIP-203](https://google.aip.dev/203)): `REQUIRED` must be set; `OUTPUT_ONLY` is "
            "set by the server and ignored in requests; `IMMUTABLE` is set on create and "
            "cannot change after.",
            "",
        ]
        for file in self.files:
            about = self.comments[file.name].get((FILE_SYNTAX,), "")
            head.append(f"- `{file.name}`" + (f": {self.cell(about)}" if about else ""))
        toc = ["## Contents", "", "- [Services](#services)"]
        body = ["## Services", ""]
        for file in self.files:
            for i, service in enumerate(file.service):
                body += self._service(file, i, service, toc)
        toc.append("- [Messages](#messages)")
        body += ["## Messages", ""]
        for name, (file_name, message, path) in self.messages.items():
            if not message.options.map_entry:
                toc.append(f"  - [{_short(name)}](#{name})")
                body += self._message(name, file_name, message, path)
        if self.enums:
            toc.append("- [Enums](#enums)")
            body += ["## Enums", ""]
            for name, (file_name, enum, path) in self.enums.items():
                toc.append(f"  - [{_short(name)}](#{name})")
                body += self._enum(name, file_name, enum, path)
        if self.other_types:
            toc.append("- [Other types](#other-types)")
            body += ["## Other types", "",
                     "Types of other packages, named plainly above. The protobuf well-known "
                     f"types are described in the [protobuf reference]({WELL_KNOWN_DOCS}).", "",
                     *(f"- `{name}`" for name in self.other_types), ""]
        return "\n".join([*head, "", *toc, "", *body]).rstrip("\n") + "\n"

    def _anchor(self, name: str, heading: str, file: str, comment: str) -> list[str]:
        lines = [f'<a id="{name}"></a>', "", heading, "", f"`{name}` in `{file}`.", ""]
        return [*lines, self.prose(comment), ""] if comment else lines

    def _service(self, file: d.FileDescriptorProto, index: int,
                 service: d.ServiceDescriptorProto, toc: list[str]) -> list[str]:
        full = f"{file.package}.{service.name}"
        comments = self.comments[file.name]
        service_comment = comments.get((FILE_SERVICE, index), "")
        toc.append(f"  - [{service.name}](#{full})")
        lines = self._anchor(full, f"### {service.name}", file.name, service_comment)
        lines += ["| RPC | request | response | access |", "|---|---|---|---|"]
        details: list[str] = []
        for j, method in enumerate(service.method):
            anchor = f"{full}.{method.name}"
            comment = comments.get((FILE_SERVICE, index, SERVICE_METHOD, j), "")
            access = self.access(method.name, comment, service_comment)
            request, response = self.type_ref(method.input_type), self.type_ref(method.output_type)
            if method.client_streaming:
                request = f"stream {request}"
            if method.server_streaming:
                response = f"stream {response}"
            toc.append(f"    - [{method.name}](#{anchor})")
            lines.append(f"| [{method.name}](#{anchor}) | {request} | {response} | "
                         f"{self.cell(access)} |")
            details += [f'<a id="{anchor}"></a>', "", f"#### {service.name}.{method.name}", "",
                        f"rpc **{method.name}**({request}) returns ({response})", "",
                        f"Access: {self.prose(access)}.", ""]
            if comment:
                details += [self.prose(comment), ""]
        return [*lines, "", *details]

    def _message(self, name: str, file: str, message: d.DescriptorProto,
                 path: SourcePath) -> list[str]:
        comments = self.comments[file]
        lines = self._anchor(name, f"### {_short(name)}", file, comments.get(path, ""))
        if not message.field:
            return [*lines, "No fields.", ""]
        lines += ["| field | number | type | label | behavior | description |",
                  "|---|---|---|---|---|---|"]
        for k, fd in enumerate(message.field):
            comment = comments.get((*path, MESSAGE_FIELD, k), "")
            lines.append(f"| `{fd.name}` | {fd.number} | {self.field_type(fd)} | "
                         f"{self.field_label(message, fd)} | {field_behavior(fd)} | "
                         f"{self.cell(comment)} |")
        return [*lines, ""]

    def _enum(self, name: str, file: str, enum: d.EnumDescriptorProto,
              path: SourcePath) -> list[str]:
        comments = self.comments[file]
        lines = self._anchor(name, f"### {_short(name)}", file, comments.get(path, ""))
        lines += ["| value | number | description |", "|---|---|---|"]
        for k, value in enumerate(enum.value):
            comment = comments.get((*path, ENUM_VALUE, k), "")
            lines.append(f"| `{value.name}` | {value.number} | {self.cell(comment)} |")
        return [*lines, ""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render Markdown API docs from proto comments.")
    parser.add_argument("protos", nargs="+", help="the .proto files to document")
    parser.add_argument("-I", "--include", default="protos", help="the protos' root (protos)")
    parser.add_argument("-o", "--output", default="-", help="the Markdown file (- for stdout)")
    args = parser.parse_args(argv)
    markdown = Renderer(compile_protos(args.include, args.protos).file).render()
    if args.output == "-":
        sys.stdout.write(markdown)
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(markdown, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""docs/API.md is what scripts/protodoc.py renders from the protos' comments (`make gen`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from tests.helpers.stack import REPO

PROTOS = sorted(str(p.relative_to(REPO)) for p in (REPO / "protos").rglob("*.proto"))
MODULES = (activity_pb2, order_pb2, product_pb2)


def render(include: Path | str, protos: list[str], out: Path) -> str:
    subprocess.run([sys.executable, "scripts/protodoc.py", "-I", str(include), "-o", str(out),
                    *protos], cwd=REPO, check=True)
    return out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> str:
    return render("protos", PROTOS, tmp_path_factory.mktemp("docs") / "API.md")


def test_committed_api_docs_are_fresh(fresh: str) -> None:
    committed = (REPO / "docs/API.md").read_text(encoding="utf-8")
    assert fresh == committed, "docs/API.md is stale: run `make gen` and commit it"


def test_every_service_rpc_and_message_has_a_section(fresh: str) -> None:
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', fresh))
    for module in MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            assert service.full_name in anchors
            assert f"### {service.name}\n" in fresh
            for method in service.methods:
                assert method.full_name in anchors
                assert f"#### {service.name}.{method.name}\n" in fresh
                assert f"[`{method.input_type.name}`](#{method.input_type.full_name})" in fresh
        for message in module.DESCRIPTOR.message_types_by_name.values():
            assert message.full_name in anchors
            for fd in message.fields:
                assert f"| `{fd.name}` | {fd.number} |" in fresh


def test_links_resolve_and_access_is_read_from_the_comments(fresh: str) -> None:
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', fresh))
    headings = {"services", "messages", "enums", "other-types"}
    targets = set(re.findall(r"\]\(#([^)]+)\)", fresh))
    assert targets - anchors - headings == set()
    rows = dict(re.findall(r"^\| \[(\w+)\]\(#[^)]+\) \|.*\| ([^|]+) \|$", fresh, re.M))
    assert rows["CreateProduct"] == "admin" and rows["GetProduct"] == "anyone"
    assert rows["Seckill"] == "user" and rows["ListOrders"] == "user"
    assert rows["DeleteOrder"].startswith("admin (or, with user tokens")
    # Well-known types are named plainly, not linked.
    assert "| `google.protobuf.Timestamp` |" in fresh
    assert "returns (`google.protobuf.Empty`)" in fresh


def test_renders_enums_maps_oneofs_and_escapes(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x/t.proto").write_text("""syntax = "proto3";
package x.v1;
// Kinds | with *stars* and <b>tags</b>.
enum Kind {
  KIND_UNSPECIFIED = 0;  // Unset.
}
// Svc.
service S {
  // Streams. Admin.
  rpc Go(stream M) returns (stream M.Inner);
}
// Msg, see S.Go.
message M {
  message Inner { int32 x = 1; }
  map<string, Inner> things = 1;
  optional int32 maybe = 2;
  oneof choice { string a = 3; Kind k = 4; }
}
""")
    text = render(tmp_path, [str(tmp_path / "x/t.proto")], tmp_path / "out.md")
    assert "| `KIND_UNSPECIFIED` | 0 | Unset. |" in text
    assert "Kinds | with \\*stars\\* and \\<b>tags\\</b>." in text
    assert ("| [Go](#x.v1.S.Go) | stream [`M`](#x.v1.M) | stream [`M.Inner`](#x.v1.M.Inner) "
            "| admin |") in text
    assert "Msg, see [S.Go](#x.v1.S.Go)." in text
    assert "| `things` | 1 | map<`string`, [`M.Inner`](#x.v1.M.Inner)> | map |  |  |" in text
    assert "| `maybe` | 2 | `int32` | optional |  |  |" in text
    assert "| `k` | 4 | [`Kind`](#x.v1.Kind) | oneof `choice` |  |  |" in text
    assert "x.v1.M.ThingsEntry" not in text


def test_field_behavior_is_annotated_where_the_comments_say_so_and_shown(fresh: str) -> None:
    """A field whose comment starts "Required" or "Output only" carries the matching
    google.api.field_behavior, and the reference shows it."""
    rows = re.findall(r"^\| `(\w+)` \| \d+ \| .*? \| (`[A-Z_, `]*`|) \| (.*) \|$", fresh, re.M)
    assert len(rows) > 20
    for name, behavior, description in rows:
        if description.startswith("Required"):
            assert "`REQUIRED`" in behavior, name
        if description.startswith("Output only"):
            assert behavior == "`OUTPUT_ONLY`", name
        if "`REQUIRED`" in behavior:
            assert description.startswith("Required"), name
    assert "| `product_id` | 2 | `int64` |  | `REQUIRED`, `IMMUTABLE` |" in fresh

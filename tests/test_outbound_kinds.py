"""Outbound kinds beyond text: images and documents by link, media id or upload from the media
folder; locations; reactions; contextual replies; read receipts and the typing indicator. Each
is checked in flows at file:line, built at run time, and sent as the Cloud API expects."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.channels.console import ConsoleSender
from adapters.channels.whatsapp import AccessToken, CloudApiSender, graph_body
from engine.errors import PermanentDelivery
from engine.flows import validate_path
from engine.outbound import (
    LocationMessage,
    MediaMessage,
    ReactionMessage,
    TextMessage,
    fit,
    from_json,
    media_path,
    to_json,
)
from engine.ports import Outgoing
from engine.settings import Secret
from tests.fakes.graph import FakeGraph
from tests.test_timers import shop

NUMBER = "106540352242922"


def flow(tmp_path: Path, text: str) -> Path:
    root = tmp_path / "flows"
    root.mkdir(exist_ok=True)
    (root / "shop.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    return root


SHOP = """
start: menu
read: typing
slots: {lat: "12.9716", lon: "77.5946", invoice: "inv-7.pdf"}
states:
  menu:
    say: "Hi! Say photo, invoice, where or thanks."
    on:
      - text: photo
        say:
          image: "https://shop.example/tiles/red.jpg"
          caption: "Red tiles, {name}"
      - text: invoice
        say:
          - {document: "{invoice}", filename: "Invoice 7.pdf", caption: "Your invoice"}
          - {text: "Anything else?", quote: true}
      - text: where
        say: {location: {latitude: "{lat}", longitude: "{lon}", name: "Acme Supplies"}}
      - text: thanks
        say: {react: "🙏"}
      - text: bad place
        say:
          - {location: {latitude: "{text}", longitude: "{lon}x"}}
          - "That place is not on the map."
"""


@pytest.mark.parametrize(
    ("say", "expected"),
    [
        ("{image: x.jpg, filename: a.pdf}", "filename: goes with document:"),
        ("{audio: a.ogg, caption: hi}", "audio takes no caption"),
        ("{image: x.jpg, text: hi}", "one kind of message each: image (and text: goes alone)"),
        ("{image: x.jpg, location: {latitude: '1', longitude: '2'}}", "one kind of message each"),
        ("{location: here}", "location: {latitude: ..., longitude: ..., name: ...}"),
        ("{location: {latitude: '1'}}", "longitude: is required"),
        ("{text: hi, caption: x}", "caption: goes with image:, document:, video: or audio:"),
        ("{text: hi, quote: maybe}", "quote: true or false"),
        ("{react: 'this is not an emoji at all'}", "react: one emoji"),
        ("{document: '{nope}'}", "unknown placeholder {nope}"),
    ],
)
def test_message_kinds_are_checked_at_file_line(tmp_path: Path, say: str, expected: str) -> None:
    root = flow(tmp_path, f"start: a\nstates:\n  a:\n    say: {say}\n    end: true\n")
    found = [f"{Path(p.file).name}:{p.line}: {p.message}" for p in validate_path(root)]
    assert len(found) == 1 and found[0].startswith("shop.yaml:4: "), found
    assert expected in found[0], found


def test_read_takes_true_or_typing(tmp_path: Path) -> None:
    root = flow(tmp_path, "start: a\nread: always\nstates:\n  a:\n    say: hi\n    end: true\n")
    assert [p.message for p in validate_path(root)] == ["read: true, false or typing"]
    assert validate_path(flow(tmp_path, SHOP)) == []


async def test_a_flow_sends_media_places_reactions_and_quotes_after_a_read_receipt(
    tmp_path: Path, opened: list[Any]
) -> None:
    s = await shop(opened, flow(tmp_path, SHOP))
    await s.say("hi")
    await s.say("photo")
    await s.say("invoice")
    await s.say("where")
    await s.say("thanks")
    await s.say("bad place")
    sent = s.sender.sent
    photo, document, quoted, place, reaction, unmapped = (o for o in sent[1:])
    assert photo.message == MediaMessage(
        "image", link="https://shop.example/tiles/red.jpg", caption="Red tiles, Ana"
    )
    assert document.message == MediaMessage(
        "document", file="inv-7.pdf", caption="Your invoice", filename="Invoice 7.pdf"
    )
    assert (quoted.message, quoted.reply_to) == (TextMessage("Anything else?"), "w3.1")
    assert document.reply_to is None
    assert place.message == LocationMessage("12.9716", "77.5946", "Acme Supplies")
    assert reaction.message == ReactionMessage("w5.1", "🙏")
    assert unmapped.message == TextMessage("That place is not on the map.")  # the place left out
    # read: typing marks each message read, with "typing...", before its replies go.
    assert s.sender.read == [(NUMBER_N, f"w{i}.1", True) for i in range(1, 7)]
    view = await s.engine.view("n:1")
    kinds = [m["type"] for m in view["messages"] if m["direction"] == "out"]
    assert kinds[1:] == ["image", "document", "text", "location", "reaction", "text"]


NUMBER_N = "n"  # the shop harness's business number


def test_the_graph_api_bodies_of_each_kind() -> None:
    def body(message: Any, reply_to: str | None = None, media_id: str | None = None) -> Any:
        out = Outgoing("r:w:0", "c", NUMBER, "15550001", None, message, reply_to=reply_to)
        sent = graph_body(out, media_id)
        return {
            k: v
            for k, v in sent.items()
            if k not in ("messaging_product", "recipient_type", "to", "biz_opaque_callback_data")
        }

    assert body(MediaMessage("image", link="https://x.example/a.jpg", caption="A")) == {
        "type": "image",
        "image": {"link": "https://x.example/a.jpg", "caption": "A"},
    }
    assert body(MediaMessage("audio", media_id="123", caption="dropped")) == {
        "type": "audio",
        "audio": {"id": "123"},
    }
    assert body(MediaMessage("document", file="inv-7.pdf"), media_id="449") == {
        "type": "document",
        "document": {"id": "449", "filename": "inv-7.pdf"},
    }
    assert body(LocationMessage("12.97", "77.59", "Shop"), reply_to="wamid.Q") == {
        "type": "location",
        "location": {"latitude": "12.97", "longitude": "77.59", "name": "Shop"},
        "context": {"message_id": "wamid.Q"},
    }
    assert body(ReactionMessage("wamid.Q", "👍"), reply_to="wamid.Q") == {
        "type": "reaction",
        "reaction": {"message_id": "wamid.Q", "emoji": "👍"},
    }
    assert body(TextMessage("hi"), reply_to="wamid.Q")["context"] == {"message_id": "wamid.Q"}


def test_each_kind_round_trips_through_the_outbox_json() -> None:
    for m in (
        MediaMessage("document", file="a.pdf", caption="c", filename="A.pdf"),
        MediaMessage("video", link="https://x.example/v.mp4"),
        LocationMessage("-33.8", "151.2", None, "Sydney"),
        ReactionMessage("wamid.1", ""),
    ):
        assert from_json(to_json(m)) == m


def test_a_long_caption_is_split_not_cut() -> None:
    pieces = fit(MediaMessage("image", link="https://x.example/a.jpg", caption="word " * 400))
    assert [type(p).__name__ for p in pieces.messages] == ["TextMessage", "MediaMessage"]
    assert sum(len(p.body) for p in pieces.messages) > 1900


def test_a_media_file_must_be_a_file_inside_the_media_folder(tmp_path: Path) -> None:
    """A flow may build the name from what a customer wrote: nothing outside MEDIA_DIR is
    ever read (.., absolute paths, a link out of the folder), nor a file over the limit."""
    media = tmp_path / "media"
    media.mkdir()
    (media / "inv.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "secret.txt").write_text("no")
    (media / "out").symlink_to(tmp_path / "secret.txt")
    (media / "big.jpg").write_bytes(b"x" * (5 * 1024 * 1024 + 1))
    assert media_path(media, "inv.pdf", "document") == (media / "inv.pdf").resolve()
    for name in ("../secret.txt", str(tmp_path / "secret.txt"), "out", ".", "missing.pdf"):
        with pytest.raises(ValueError, match="MEDIA_DIR"):
            media_path(media, name, "document")
    with pytest.raises(ValueError, match="at most 5242880"):
        media_path(media, "big.jpg", "image")


async def test_a_file_is_uploaded_then_sent_by_its_media_id(
    tmp_path: Path, graph: tuple[FakeGraph, str]
) -> None:
    fake, url = graph
    media = tmp_path / "media"
    media.mkdir()
    (media / "inv-7.pdf").write_bytes(b"%PDF-1.4 invoice")
    async with aiohttp.ClientSession() as session:
        sender = CloudApiSender(session, url, AccessToken(Secret("tok")), media_dir=media)
        doc = MediaMessage("document", file="inv-7.pdf", caption="Your invoice")
        wamid = await sender.send(Outgoing("r:w:0", "c", NUMBER, "15550001", None, doc))
        assert wamid.startswith("wamid.")
        (upload,) = fake.uploads
        assert upload["fields"] == {"messaging_product": "whatsapp", "type": "application/pdf"}
        assert (upload["filename"], upload["bytes"]) == ("inv-7.pdf", b"%PDF-1.4 invoice")
        assert upload["auth"] == "Bearer tok"
        sent = fake.requests[-1]["body"]
        assert sent["document"] == {
            "id": "4490000000000001",
            "caption": "Your invoice",
            "filename": "inv-7.pdf",
        }
        escape = MediaMessage("document", file="../../etc/passwd")
        with pytest.raises(PermanentDelivery, match="not a file inside MEDIA_DIR"):
            await sender.send(Outgoing("r:w:1", "c", NUMBER, "15550001", None, escape))
        assert len(fake.uploads) == 1
        await sender.mark_read(NUMBER, "wamid.IN", typing=True)
        assert fake.requests[-1]["body"] == {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": "wamid.IN",
            "typing_indicator": {"type": "text"},
        }


async def test_the_console_copies_a_file_it_sends_and_prints_where(tmp_path: Path) -> None:
    import io

    media = tmp_path / "media"
    media.mkdir()
    (media / "inv-7.pdf").write_bytes(b"%PDF")
    out = io.StringIO()
    console = ConsoleSender(out, media_dir=media)
    doc = MediaMessage("document", file="inv-7.pdf", filename="Invoice.pdf")
    await console.send(Outgoing("r:w1:0", "c", NUMBER, "15550001", None, doc))
    copy = media / "sent" / "r_w1_0-inv-7.pdf"
    assert copy.read_bytes() == b"%PDF"
    assert f"(saved as {copy})" in out.getvalue()
    assert "[document: Invoice.pdf]" in out.getvalue()


async def test_media_dir_is_where_the_app_uploads_files_from(
    tmp_path: Path, start_app: Any, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    """MEDIA_DIR, set in the environment, is the folder the running app's sender reads."""
    import io

    from adapters.web import ENGINE
    from tests.support import body, change, signed, text

    media = tmp_path / "files"
    media.mkdir()
    (media / "inv-9.pdf").write_bytes(b"%PDF-1.4 nine")
    flows = tmp_path / "fl"
    flows.mkdir()
    (flows / "support.yaml").write_text(
        "start: a\nstates:\n  a:\n    say: {document: inv-9.pdf}\n    end: true\n"
    )
    env.update(MEDIA_DIR=str(media), FLOWS_DIR=str(flows))
    client = await start_app(env)
    raw, headers = signed(body(change([text("15550000041", "w1", "hi")])))
    r = await client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
    assert r.status == 200
    await client.app[ENGINE].actors.wait_idle()
    await client.app[ENGINE].delivery.wait_empty()
    (upload,) = graph[0].uploads
    assert upload["bytes"] == b"%PDF-1.4 nine"
    assert graph[0].requests[-1]["body"]["document"]["id"] == "4490000000000001"

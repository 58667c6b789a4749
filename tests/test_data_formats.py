"""Real-format loaders: tiny files with the official JSON keys, loaded through the real loaders and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.config import DatasetSpec
from mmbench_cli.data.formats import load_dataset_spec
from mmbench_cli.data.types import CaptionSample, InterleavedDoc, TextDoc, VQASample
from mmbench_cli.errors import MMError
from mmbench_cli.registry import DATA_FORMATS

runner = CliRunner()


def _image(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), color).save(path)
    return path.name


def _json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def _spec(**kwargs: Any) -> DatasetSpec:
    return DatasetSpec(**{key: str(value) if isinstance(value, Path) else value for key, value in kwargs.items()})


def make_coco_captions(root: Path) -> Path:
    """Official ``captions_val2014.json`` with two images."""
    for image_id in (9, 25):
        _image(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    return _json(root / "captions_val2014.json", {
        "info": {"year": 2014}, "licenses": [],
        "images": [{"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "height": 10, "width": 12},
                   {"id": 25, "file_name": "COCO_val2014_000000000025.jpg", "height": 10, "width": 12}],
        "annotations": [{"image_id": 9, "id": 1, "caption": "A plate of food. "},
                        {"image_id": 9, "id": 2, "caption": "Some food on a plate."},
                        {"image_id": 25, "id": 3, "caption": "A giraffe eating leaves."}],
    })


def test_registry_lists_the_formats() -> None:
    assert {"coco-karpathy", "coco-captions", "nocaps", "textcaps", "vqav2", "okvqa", "textvqa", "vizwiz", "llava",
            "interleaved-jsonl", "text"} <= set(DATA_FORMATS.names())


def test_coco_captions(tmp_path: Path) -> None:
    path = make_coco_captions(tmp_path)
    samples = load_dataset_spec(_spec(format="coco-captions", path=path, images=tmp_path / "val2014"))
    assert [s.image_id for s in samples] == ["9", "25"]
    assert samples[0].captions == ["A plate of food.", "Some food on a plate."]
    assert samples[1].image.load().size == (12, 10)
    assert samples.num_bad == 0


def test_coco_karpathy_split(tmp_path: Path) -> None:
    images = []
    for number, split in enumerate(("train", "restval", "val", "test")):
        filename = _image(tmp_path / "train2014" / f"COCO_train2014_{number:012d}.jpg")
        images.append({"filepath": "train2014", "sentids": [number], "filename": filename, "imgid": number,
                       "split": split, "sentences": [{"tokens": ["a", "cat"], "raw": f"A cat {number}.",
                                                      "imgid": number, "sentid": number}], "cocoid": 100 + number})
    path = _json(tmp_path / "dataset_coco.json", {"images": images, "dataset": "coco"})
    train = load_dataset_spec(_spec(format="coco-karpathy", path=path, images=tmp_path))
    assert [s.image_id for s in train] == ["100", "101"]  # train + restval
    test = load_dataset_spec(_spec(format="coco-karpathy", path=path, images=tmp_path, split="test"))
    assert [s.captions for s in test] == [["A cat 3."]]


def test_textcaps_native_and_coco_format(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "011e7e629fb9ae7b.jpg")
    row = {"image_id": "011e7e629fb9ae7b", "image_classes": ["Sign"], "image_path": "train/011e7e629fb9ae7b.jpg",
           "caption_id": 1, "caption_str": "a sign that says stop", "set_name": "train",
           "reference_strs": ["a sign that says stop", "a red stop sign"]}
    path = _json(tmp_path / "TextCaps_0.1_train.json", {"dataset_type": "train", "dataset_name": "textcaps",
                                                        "dataset_version": "0.1", "data": [row, dict(row, caption_id=2)]})
    samples = load_dataset_spec(_spec(format="textcaps", path=path, images=tmp_path))
    assert len(samples) == 1 and samples[0].captions == ["a sign that says stop", "a red stop sign"]
    nocaps = load_dataset_spec(_spec(format="nocaps", path=make_coco_captions(tmp_path), images=tmp_path / "val2014"))
    assert len(nocaps) == 2


def make_vqav2(root: Path) -> tuple[Path, Path]:
    """Official VQAv2 questions + annotations pair (val2014)."""
    _image(root / "val2014" / "COCO_val2014_000000000042.jpg")
    questions = _json(root / "v2_OpenEnded_mscoco_val2014_questions.json", {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "val2014",
        "questions": [{"image_id": 42, "question": "What color is the bus?", "question_id": 42000}],
    })
    answers = [{"answer": "red" if i < 8 else "orange", "answer_confidence": "yes", "answer_id": i + 1}
               for i in range(10)]
    annotations = _json(root / "v2_mscoco_val2014_annotations.json", {
        "info": {}, "license": {}, "data_subtype": "val2014",
        "annotations": [{"question_type": "what color is the", "multiple_choice_answer": "red", "answers": answers,
                         "image_id": 42, "answer_type": "other", "question_id": 42000}],
    })
    return questions, annotations


def test_vqav2_and_okvqa(tmp_path: Path) -> None:
    questions, annotations = make_vqav2(tmp_path)
    for name in ("vqav2", "okvqa"):
        samples = load_dataset_spec(_spec(format=name, path=annotations, questions=questions,
                                          images=tmp_path / "val2014"))
        assert len(samples) == 1 and isinstance(samples[0], VQASample)
        assert samples[0].answers == ["red"] * 8 + ["orange"] * 2
        assert samples[0].question == "What color is the bus?" and samples[0].question_id == "42000"
    with pytest.raises(MMError, match="questions"):
        load_dataset_spec(_spec(format="vqav2", path=annotations, images=tmp_path))


def test_textvqa(tmp_path: Path) -> None:
    _image(tmp_path / "train_images" / "0054c91397f2fe05.jpg")
    path = _json(tmp_path / "TextVQA_0.5.1_val.json", {
        "dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
        "data": [{"question": "what is written?", "image_id": "0054c91397f2fe05", "image_classes": ["Poster"],
                  "flickr_original_url": "", "flickr_300k_url": "", "image_width": 12, "image_height": 10,
                  "answers": ["nokia"] * 9 + ["nokla"], "question_tokens": ["what"], "question_id": 34602,
                  "set_name": "val"}],
    })
    samples = load_dataset_spec(_spec(format="textvqa", path=path, images=tmp_path / "train_images"))
    assert samples[0].answers.count("nokia") == 9 and samples[0].question_id == "34602"


def test_vizwiz(tmp_path: Path) -> None:
    _image(tmp_path / "val" / "VizWiz_val_00000000.jpg")
    path = _json(tmp_path / "val.json", [{
        "image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answer_type": "other", "answerable": 1,
        "answers": [{"answer": "soup", "answer_confidence": "yes"}] * 10,
    }])
    samples = load_dataset_spec(_spec(format="vizwiz", path=path, images=tmp_path / "val"))
    assert samples[0].answers == ["soup"] * 10 and samples[0].meta["answerable"] == 1


def test_llava(tmp_path: Path) -> None:
    _image(tmp_path / "coco" / "000000033471.jpg")
    path = _json(tmp_path / "llava_instruct.json", [{
        "id": "000000033471", "image": "coco/000000033471.jpg",
        "conversations": [{"from": "human", "value": "<image>\nWhat are the colors of the bus?"},
                          {"from": "gpt", "value": "The bus is white and red."}],
    }, {"id": "text-only", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}])
    docs = load_dataset_spec(_spec(format="llava", path=path, images=tmp_path))
    assert isinstance(docs[0], InterleavedDoc) and isinstance(docs[1], TextDoc)
    assert docs[0].chunks[1] == "Question: What are the colors of the bus? Answer: The bus is white and red."
    captions = load_dataset_spec(_spec(format="llava", path=path, images=tmp_path, kind="caption"))
    assert isinstance(captions[0], CaptionSample) and captions[0].captions == ["The bus is white and red."]


def test_interleaved_jsonl_and_text(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png", (0, 0, 200))
    lines = [{"text": "A red square.<image>It is red. Then blue:<image>", "images": ["a.png", "b.png"]},
             {"text_list": ["First.", "Second."], "image_info": [{"image_name": "a.png", "matched_text_index": 1}]},
             {"texts": ["Intro", None], "images": [None, "b.png"]}]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    docs = load_dataset_spec(_spec(format="interleaved-jsonl", path=path))
    assert [sum(not isinstance(c, str) for c in d.chunks) for d in docs] == [2, 1, 1]
    assert docs[1].chunks[0] == "First." and not isinstance(docs[1].chunks[1], str)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one doc.\n\nanother doc.\n")
    assert [d.text for d in load_dataset_spec(_spec(format="text", path=corpus))] == ["one doc.", "another doc."]


# ----------------------------------------------------------------- OBELICS / MMC4 image URLs (issue 15)
OBELICS_URLS = ["https://example.org/photos/cat.jpg", "https://cdn.example.com/img/42.png?w=640"]


def _obelics_line(urls: list[str]) -> dict[str, Any]:
    """One OBELICS document as released: aligned ``images``/``texts`` lists, metadata as JSON strings."""
    return {
        "images": [urls[0], None, urls[1], None], "texts": [None, "A cat on a mat.", None, "The end."],
        "metadata": json.dumps([{"document_url": "https://example.org/post", "unformatted_src": urls[0],
                                 "src": urls[0], "formatted_filename": "cat", "alt_text": "", "original_width": 12,
                                 "original_height": 10}, None, {"src": urls[1]}, None]),
        "general_metadata": json.dumps({"url": "https://example.org/post", "warc_filename": "x.warc.gz",
                                        "warc_record_offset": 1, "warc_record_length": 2}),
    }


def _jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_obelics_urls_map_to_local_files_through_a_url_map(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "cat.jpg")
    _image(tmp_path / "images" / "sub" / "42.png", (0, 0, 200))
    docs = _jsonl(tmp_path / "obelics.jsonl", [_obelics_line(OBELICS_URLS)])
    url_map = _json(tmp_path / "url_map.json", {OBELICS_URLS[0]: "cat.jpg", OBELICS_URLS[1]: "sub/42.png"})
    spec = _spec(format="interleaved-jsonl", path=docs, images=tmp_path / "images", url_map=url_map)
    [doc] = load_dataset_spec(spec)
    assert [c if isinstance(c, str) else c.path.name for c in doc.chunks] == [
        "cat.jpg", "A cat on a mat.", "42.png", "The end."]
    assert doc.chunks[2].load().getpixel((0, 0)) == (0, 0, 200)
    tsv = tmp_path / "urls.tsv"
    tsv.write_text(f"{OBELICS_URLS[0]}\tcat.jpg\n{OBELICS_URLS[1]}\tsub/42.png\n")
    assert len(load_dataset_spec(_spec(format="interleaved-jsonl", path=docs, images=tmp_path / "images",
                                       url_map=tsv))[0].chunks) == 4
    del_one = _json(tmp_path / "partial_map.json", {OBELICS_URLS[0]: "cat.jpg"})
    partial = _spec(format="interleaved-jsonl", path=docs, images=tmp_path / "images", url_map=del_one)
    with pytest.raises(MMError, match=r"obelics\.jsonl: line 1: image URL https://cdn\.example\.com/img/42\.png\?w=640 "
                                      r"has no local file \(not in url_map .*partial_map\.json\)"):
        load_dataset_spec(partial)
    skipped = load_dataset_spec(partial, skip_bad=True)
    assert len(skipped) == 0 and skipped.num_bad == 1 and OBELICS_URLS[1] in skipped.problems[0]


def test_obelics_urls_in_an_img2dataset_layout(tmp_path: Path) -> None:
    shard = tmp_path / "downloaded" / "00000"
    for key, (url, color) in enumerate(zip(OBELICS_URLS, [(200, 30, 30), (0, 0, 200)], strict=True)):
        _image(shard / f"{key:09d}.jpg", color)
        _json(shard / f"{key:09d}.json", {"url": url, "key": f"{key:09d}", "status": "success", "error_message": None,
                                          "width": 12, "height": 10, "original_width": 12, "original_height": 10})
    _json(tmp_path / "downloaded" / "00000_stats.json", {"count": 2, "successes": 2})  # no url: ignored
    docs = _jsonl(tmp_path / "obelics.jsonl", [_obelics_line(OBELICS_URLS)])
    [doc] = load_dataset_spec(_spec(format="interleaved-jsonl", path=docs, images=tmp_path / "downloaded"))
    assert [c.path.name for c in doc.chunks if not isinstance(c, str)] == ["000000000.jpg", "000000001.jpg"]
    (shard / "000000001.jpg").unlink()
    with pytest.raises(MMError, match=r"img2dataset \.json sidecars under"):
        load_dataset_spec(_spec(format="interleaved-jsonl", path=docs, images=tmp_path / "downloaded"))


def test_mmc4_raw_url_is_used_when_the_image_file_is_absent(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "local.jpg")
    _image(tmp_path / "images" / "fetched.jpg", (0, 0, 200))
    line = {"url": "https://example.org/page", "text_list": ["First.", "Second."], "similarity_matrix": [[0.3, 0.1]],
            "could_have_url_duplicate": 0,
            "image_info": [{"image_name": "local.jpg", "raw_url": "https://example.org/a.jpg", "matched_text_index": 0,
                            "matched_sim": 0.3},
                           {"image_name": "b9040a0dbb22.jpg", "raw_url": "https://example.org/b.jpg",
                            "matched_text_index": 1, "matched_sim": 0.2}]}
    docs = _jsonl(tmp_path / "mmc4.jsonl", [line])
    url_map = _json(tmp_path / "map.json", [{"url": "https://example.org/b.jpg", "path": "fetched.jpg"}])
    [doc] = load_dataset_spec(_spec(format="interleaved-jsonl", path=docs, images=tmp_path / "images", url_map=url_map))
    assert [c if isinstance(c, str) else c.path.name for c in doc.chunks] == [
        "local.jpg", "First.", "fetched.jpg", "Second."]


def test_hf_datasets_directory(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = {"image": [Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")],
            "question": ["what color?", "what color?"], "answers": [["red"] * 10, ["blue"] * 10]}
    datasets.Dataset.from_dict(rows, features=datasets.Features({
        "image": datasets.Image(), "question": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string"))})).save_to_disk(str(tmp_path / "hf"))
    samples = load_dataset_spec(_spec(format="vqav2", path=tmp_path / "hf"))
    assert [s.answers[0] for s in samples] == ["red", "blue"]
    assert samples[1].image.load().getpixel((0, 0)) == (0, 0, 255)


# ---------------------------------------------------------------------------------------------- errors
def test_wrong_key_missing_image_corrupt_image_and_non_json(tmp_path: Path) -> None:
    path = make_coco_captions(tmp_path)
    images = tmp_path / "val2014"
    data = json.loads(path.read_text())
    # wrong top-level key: always an error naming the file
    bad = _json(tmp_path / "wrongkey.json", {"images": data["images"], "annotation": data["annotations"]})
    with pytest.raises(MMError, match=r"wrongkey\.json: no 'annotations' key"):
        load_dataset_spec(_spec(format="coco-captions", path=bad, images=images), skip_bad=True)
    # non-JSON
    text = tmp_path / "notjson.json"
    text.write_text("images:\n - oops")
    with pytest.raises(MMError, match=r"notjson\.json: not a JSON file"):
        load_dataset_spec(_spec(format="coco-captions", path=text, images=images))
    # a record lacking a key, a missing image, a corrupt image: errors, or skipped and counted
    data["annotations"].append({"image_id": 25, "id": 4})
    data["images"].append({"id": 77, "file_name": "missing.jpg"})
    data["annotations"].append({"image_id": 77, "id": 5, "caption": "gone"})
    (images / "corrupt.jpg").write_bytes(b"definitely not a jpeg")
    data["images"].append({"id": 78, "file_name": "corrupt.jpg"})
    data["annotations"].append({"image_id": 78, "id": 6, "caption": "broken"})
    messy = _json(tmp_path / "messy.json", data)
    with pytest.raises(MMError, match=r"messy\.json: annotations\[3\] lacks key 'caption'"):
        load_dataset_spec(_spec(format="coco-captions", path=messy, images=images))
    del data["annotations"][3]
    _json(messy, data)
    with pytest.raises(MMError, match=r"missing\.jpg: image file not found"):
        load_dataset_spec(_spec(format="coco-captions", path=messy, images=images))
    data["annotations"].insert(3, {"image_id": 25, "id": 4})
    _json(messy, data)
    skipped = load_dataset_spec(_spec(format="coco-captions", path=messy, images=images), skip_bad=True)
    assert [s.image_id for s in skipped] == ["9", "25"] and skipped.num_bad == 3
    assert any("corrupt.jpg" in problem for problem in skipped.problems)


def test_truncated_image_is_caught_when_decoding(tmp_path: Path) -> None:
    path = make_coco_captions(tmp_path)
    image = tmp_path / "val2014" / "COCO_val2014_000000000009.jpg"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(image, format="JPEG")
    image.write_bytes(image.read_bytes()[:300])
    spec = _spec(format="coco-captions", path=path, images=tmp_path / "val2014")
    with pytest.raises(MMError, match=r"COCO_val2014_000000000009\.jpg: corrupt or truncated image"):
        load_dataset_spec(spec, verify="decode")
    assert load_dataset_spec(spec, skip_bad=True, verify="decode").num_bad == 1


# ------------------------------------------------------------------------------------------------- CLI
def _local_config(tmp_path: Path, annotation: Path, images: Path, **data: Any) -> Path:
    config = {"data": {"source": "local", "data_mix": {"caption": 1.0, "interleaved": 0.0, "text": 0.0},
                       "datasets": [{"format": "coco-captions", "path": str(annotation), "images": str(images)}],
                       **data}}
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_build_data_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    path = make_coco_captions(tmp_path)
    (tmp_path / "val2014" / "COCO_val2014_000000000025.jpg").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    config = _local_config(tmp_path, path, tmp_path / "val2014")
    result = runner.invoke(app, ["build", "--data", str(config), "-o", str(tmp_path / "report")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "COCO_val2014_000000000025.jpg" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "report").exists()
    notjson = tmp_path / "captions.json"
    notjson.write_text("{not json")
    result = runner.invoke(app, ["build", "--data", str(_local_config(tmp_path, notjson, tmp_path))])
    assert result.exit_code == 2 and "captions.json: not a JSON file" in result.output


@pytest.mark.parametrize("skip_arg", ["data.skip_bad=true", "--skip-bad"])
def test_cli_build_data_skip_bad_counts(tmp_path: Path, skip_arg: str) -> None:
    path = make_coco_captions(tmp_path)
    (tmp_path / "val2014" / "COCO_val2014_000000000025.jpg").unlink()
    config = _local_config(tmp_path, path, tmp_path / "val2014")
    out = tmp_path / "report"
    result = runner.invoke(app, ["build", "--data", str(config), skip_arg, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad samples" in result.output
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["bad"] == 1 and summary["datasets"][0]["samples"] == 1
    assert Image.open(out / "contact_sheet.png").size[0] > 100


def test_cli_build_data_synthetic(tmp_path: Path) -> None:
    out = tmp_path / "synthetic-report"
    result = runner.invoke(app, ["build", "--data", "data.num_train_images=16", "data.num_val_images=4",
                                 "data.num_test_images=4", f"data.cache_dir={tmp_path / 'cache'}", "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["splits"]["train"]["images"] == 16 and summary["rendered"] == 24
    assert str(out / "contact_sheet.png") in result.output.replace("\n", "")
    assert (out / "contact_sheet.png").stat().st_size > 1000

"""The demo's computations without a page: input checks, segmentation with both models, pictures, caching."""

import numpy as np
import pytest
from PIL import Image

from patseg.demo.backend import (
    BENCHMARK_VOCABULARIES,
    DemoBackend,
    Picture,
    benchmark_vocabulary,
    code_colours,
    fit_picture,
    heat_colours,
    parse_vocabulary,
    read_picture,
)
from patseg.errors import ImageReadError, UsageError
from patseg.images import tint
from patseg.models.pat.geometry import STAGES
from patseg.predictor import Segmenter
from patseg.resources import load_class_names


def test_vocabulary_is_one_name_per_line_or_commas_on_one_line():
    assert parse_vocabulary(" sky, tree ,,road ") == ["sky", "tree", "road"]
    assert parse_vocabulary("wall, walls\nsky\n\n") == ["wall, walls", "sky"]
    assert parse_vocabulary("red circle") == ["red circle"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        (" , ,\n\n", "empty"),
        ("cat, cat", "repeats class names \\('cat' at positions 1, 2\\)"),
        ("cat\ndog\ncat", "'cat' at positions 1, 3"),
    ],
)
def test_bad_vocabularies_get_a_message(text, message):
    with pytest.raises(UsageError, match=message):
        parse_vocabulary(text)


def test_thousands_of_names_are_refused_with_the_limit():
    with pytest.raises(UsageError, match="has 3,000 names; this page takes at most 1,000"):
        parse_vocabulary(", ".join(f"class {i}" for i in range(3000)))
    assert len(parse_vocabulary(", ".join(f"class {i}" for i in range(3000)), max_classes=3000)) == 3000


@pytest.mark.parametrize("label", list(BENCHMARK_VOCABULARIES))
def test_one_click_vocabularies_keep_every_benchmark_name(label):
    names = load_class_names(BENCHMARK_VOCABULARIES[label])
    assert parse_vocabulary(benchmark_vocabulary(label)) == list(names)


def test_unreadable_uploads_name_the_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.txt: not a readable image"):
        read_picture(text, 512)
    good = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_picture(cut, 512)
    assert read_picture(good, 512).image.shape == (40, 60, 3)


def test_large_pictures_are_shrunk_and_say_so():
    image = np.random.default_rng(0).integers(0, 255, (300, 2000, 3), dtype=np.uint8)
    picture = fit_picture(image, "big.jpg", 512)
    assert picture.image.shape == (77, 512, 3)
    assert picture.notes == ("the image (2000 x 300) is larger than this model works at; it was resized to 512 x 77",)
    assert fit_picture(image[:100, :500], "small.jpg", 512).notes == ()


def test_heat_and_code_colours():
    heat = heat_colours(np.array([[0.0, 1.0, 2.0, -1.0]]))
    assert heat[0, 0].tolist() == [20, 20, 80] and heat[0, 1].tolist() == [255, 220, 40]
    assert heat[0, 2].tolist() == heat[0, 1].tolist() and heat[0, 3].tolist() == heat[0, 0].tolist()
    # Halfway between the second and third stops: the mean of (60, 60, 200) and (220, 40, 40).
    assert heat_colours(np.array([[1.0, 2.0]]), top=2.0)[0].tolist() == [[140, 50, 120], [255, 220, 40]]
    codes = np.array([[7, 7], [100, 3]])
    colours = code_colours(codes)
    assert (colours[0, 0] == colours[0, 1]).all() and len({tuple(c) for c in colours.reshape(-1, 3)}) == 3


def test_both_models_answer_with_every_picture(backend):
    picture = backend.scene(0)
    answers = backend.segment(picture, backend.default_vocabulary)
    assert list(answers) == ["SAN-tiny", "PAT-tiny"]
    h, w = picture.image.shape[:2]
    names = list(backend.world.concept_names)
    for answer in answers.values():
        assert answer.labels.shape == (h, w) and answer.label_map.shape == (h, w, 3)
        assert answer.overlay.shape == (h, w, 3)
        assert np.array_equal(answer.overlay, tint(picture.image, answer.label_map))
        present = set(np.unique(answer.labels).tolist())
        assert {e.name for e in answer.legend} == {names[c] for c in present}
        assert sum(e.share for e in answer.legend) == pytest.approx(100.0)
        assert all(e.unseen == (e.name in backend.world.unseen_names) for e in answer.legend)
        assert answer.seconds > 0
    pat = answers["PAT-tiny"]
    assert list(pat.token_maps) == list(STAGES)
    sizes = [pat.token_maps[s].shape[0] for s in STAGES]
    assert sizes == sorted(sizes, reverse=True)  # early is the finest grid
    assert pat.reconstruction is not None and pat.reconstruction.shape == (*pat.inference.valid, 3)
    assert answers["SAN-tiny"].token_maps == {} and answers["SAN-tiny"].reconstruction is None


def test_the_answer_equals_the_segmenter_and_the_heat_map_is_its_score(backend):
    picture = backend.scene(1)
    vocabulary = "red circle, blue square, grass, sky"
    answers = backend.segment(picture, vocabulary)
    for name, model in backend.models.items():
        reference = Segmenter(model, parse_vocabulary(vocabulary), short_side=backend.short_side)
        assert np.array_equal(answers[name].labels, reference.predict(picture.image))
        scores = reference.scores(picture.image)
        c = 2
        score = answers[name].segmenter.class_score(answers[name].inference, c)
        np.testing.assert_allclose(score, scores[c], atol=1e-6)
        heat = backend.heat_map(answers[name], "grass")
        assert heat.top == max(1.0, float(scores[c].max())) and heat.class_name == "grass"
        assert np.array_equal(heat.image, heat_colours(scores[c], heat.top))
    with pytest.raises(UsageError, match="'tree' is not in the vocabulary"):
        backend.heat_map(answers["SAN-tiny"], "tree")


def test_text_embeddings_are_computed_once_per_vocabulary(backend, monkeypatch):
    calls = []
    for model in backend.models.values():
        original = model.encode_vocabulary
        monkeypatch.setattr(model, "encode_vocabulary", lambda names, f=original: calls.append(len(names)) or f(names))
    picture = backend.scene(2)
    backend.segment(picture, "grass, sky, yellow star")
    backend.segment(backend.scene(3), "grass, sky, yellow star")
    assert calls == [3, 3]  # one per model, not per request
    backend.segment(picture, "grass, sky")
    assert calls == [3, 3, 2, 2]


def test_without_a_world_there_are_no_scenes(backend):
    plain = DemoBackend(dict(backend.models), short_side=64, max_long_side=128)
    with pytest.raises(UsageError, match="generated scenes come with the built-in models"):
        plain.scene(0)
    answers = plain.segment(Picture(np.full((50, 70, 3), 128, np.uint8), "grey"), "sky\ngrass")
    assert answers["SAN-tiny"].labels.shape == (50, 70)
    assert all(not e.unseen for a in answers.values() for e in a.legend)


def test_infer_and_labels_equal_predict(backend):
    model = backend.models["PAT-tiny"]
    segmenter = Segmenter(model, ["sky", "grass"], short_side=64)
    image = np.random.default_rng(1).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    inference = segmenter.infer(image)
    assert inference.output.reconstruction is None and inference.size == (48, 80)
    assert np.array_equal(segmenter.labels(inference), segmenter.predict(image))
    with pytest.raises(ValueError, match="SAN: it has no reconstruction"):
        Segmenter(backend.models["SAN-tiny"], ["sky"]).infer(image, reconstruct=True)
    with pytest.raises(IndexError):
        segmenter.class_score(inference, 2)

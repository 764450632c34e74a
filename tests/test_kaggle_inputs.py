"""kernel_lib.kaggle.find_input: an attached input by slug under every Kaggle layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_lib.kaggle import find_input, input_root, resolve_cli_path

SLUG = "sartorius-fold-models"


def make(root: Path, *parts: str) -> Path:
    path = root.joinpath(*parts)
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize(
    "layout",
    [(SLUG,), ("competitions", SLUG), ("datasets", "someone", SLUG)],
    ids=["classic <slug>", "competitions/<slug>", "datasets/<owner>/<slug>"],
)
def test_each_layout_is_found(tmp_path: Path, layout: tuple[str, ...]) -> None:
    expected = make(tmp_path, *layout)
    make(tmp_path, "datasets", "someone", "other-dataset")
    assert find_input(SLUG, tmp_path) == expected


def test_classic_layout_wins_over_the_others(tmp_path: Path) -> None:
    classic = make(tmp_path, SLUG)
    make(tmp_path, "datasets", "someone", SLUG)
    assert find_input(SLUG, tmp_path) == classic


def test_owner_picks_one_of_several_datasets_and_several_without_owner_is_an_error(tmp_path: Path) -> None:
    make(tmp_path, "datasets", "alice", SLUG)
    bob = make(tmp_path, "datasets", "bob", SLUG)
    assert find_input(SLUG, tmp_path, owner="bob") == bob
    with pytest.raises(ValueError, match=r"several owners .*\(alice, bob\)"):
        find_input(SLUG, tmp_path)


def test_missing_input_lists_what_is_under_the_root(tmp_path: Path) -> None:
    make(tmp_path, "competitions", "sartorius-cell-instance-segmentation")
    make(tmp_path, "datasets", "someone", "sartorius-offline-bundle")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError) as info:
        find_input(SLUG, tmp_path)
    message = str(info.value)
    assert f"no Kaggle input {SLUG!r}" in message
    assert str(tmp_path / SLUG) in message and str(tmp_path / "competitions" / SLUG) in message
    assert "competitions/sartorius-cell-instance-segmentation/" in message
    assert "datasets/someone/sartorius-offline-bundle/" in message and "notes.txt" in message
    assert "dataset_sources" in message  # the fix


def test_missing_root_and_bad_slugs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        find_input(SLUG, tmp_path / "nowhere")
    for bad in ("", "owner/slug", ".."):
        with pytest.raises(ValueError, match="input slug: expected"):
            find_input(bad, tmp_path)


def test_root_comes_from_kaggle_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_INPUT", str(tmp_path))
    expected = make(tmp_path, "competitions", SLUG)
    assert input_root() == tmp_path
    assert find_input(SLUG) == expected
    monkeypatch.delenv("KAGGLE_INPUT")
    assert input_root() == Path("/kaggle/input")


def test_cli_paths_with_the_kaggle_prefix(tmp_path: Path) -> None:
    competition = make(tmp_path, "competitions", "sartorius-cell-instance-segmentation")
    assert resolve_cli_path("kaggle:sartorius-cell-instance-segmentation/test", tmp_path) == competition / "test"
    assert resolve_cli_path("kaggle:sartorius-cell-instance-segmentation", tmp_path) == competition
    assert resolve_cli_path("runs/models", tmp_path) == Path("runs/models")
    with pytest.raises(ValueError, match="no Kaggle input 'sartorius-fold-models'"):
        resolve_cli_path(f"kaggle:{SLUG}", tmp_path)


def test_predict_takes_kaggle_inputs_under_any_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kernel_lib.__main__ import build_parser

    competition = make(tmp_path, "competitions", "sartorius-cell-instance-segmentation")
    models = make(tmp_path, "datasets", "someone", SLUG)
    monkeypatch.setenv("KAGGLE_INPUT", str(tmp_path))
    argv = ["predict", "--test-dir", "kaggle:sartorius-cell-instance-segmentation/test", "--models", f"kaggle:{SLUG}"]
    argv += ["--sample", "kaggle:sartorius-cell-instance-segmentation/sample_submission.csv"]
    args = build_parser(only="predict").parse_args(argv)
    assert (args.test_dir, args.models) == (competition / "test", models)
    assert args.sample == competition / "sample_submission.csv"
    assert build_parser(only="predict").parse_args(["predict", "--test-dir", "t", "--models", "m"]).models == Path("m")

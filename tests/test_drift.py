"""tfrec_lm.drift: migration scores, migration points, population statistics, the report and its CLI.

Known answers on hand-made vectors and genres, migration points on the synthetic data
(whose users switch category at a known position), item vectors from a tiny random BERT,
and the report on synthetic data (no pretrained encoder, no MovieLens).
"""

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest

from tfrec_lm.errors import DataError
from tfrec_lm.data.split import build_sequences, build_vocab
from tfrec_lm.data.synthetic import synthetic_migration
from tfrec_lm.drift import (
    analyze,
    embedding_migration_scores,
    genre_migration_scores,
    item_profiles,
    load_metrics,
    migration_points,
    null_threshold,
    population_stats,
    report,
    window_distances,
)
from tfrec_lm.drift.__main__ import main
from tfrec_lm.evaluation.migration import js_migration_scores

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="the drift report needs matplotlib")

# vocab index -> vector; 0 is padding
VECTORS = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [-1.0, 0.0]])
X, Y, X2, NEG = 1, 2, 3, 4


# --- scores -----------------------------------------------------------------------------


def test_embedding_score_known_answers():
    histories = [
        np.array([X] * 20),  # identical early and recent -> 0
        np.array([X] * 10 + [Y] * 10),  # orthogonal -> 1
        np.array([X] * 10 + [NEG] * 10),  # opposite -> 2
        np.array([X] * 10 + [X2] * 10),  # same direction, other norm -> 0 (vectors are normalised)
        np.array([X, Y, 0, 0]),  # right padding ignored: early [X], recent [X, Y] -> 1 - cos 45 deg
        np.array([X]),  # early side empty -> 0
        np.array([], dtype=np.int32),
    ]
    scores = embedding_migration_scores(histories, VECTORS)
    assert scores.tolist() == pytest.approx([0.0, 1.0, 2.0, 0.0, 1 - np.sqrt(0.5), 0.0, 0.0])


def test_embedding_score_uses_first_half_and_last_recent():
    # 24 items: 12 X, then 2 Y, then 10 X. early = first 12 (X), recent = last 10 (X) -> 0.
    assert embedding_migration_scores([np.array([X] * 12 + [Y] * 2 + [X] * 10)], VECTORS)[0] == pytest.approx(0.0)
    # recent=2 reaches only the last two items
    history = np.array([X] * 10 + [Y] * 8 + [X] * 2)
    assert embedding_migration_scores([history], VECTORS, recent=2)[0] == pytest.approx(0.0)
    assert embedding_migration_scores([history], VECTORS, recent=10)[0] > 0.1


def test_genre_score_is_the_spec_score():
    assert genre_migration_scores is js_migration_scores


# --- migration points ---------------------------------------------------------------------


def _synthetic(length=30, num_users=40, seed=0):
    dataset, switches = synthetic_migration(num_users=num_users, length=length, seed=seed)
    vocab = build_vocab(dataset.items)
    sequences = build_sequences(dataset, vocab)
    switch = switches.set_index("user_id").loc[sequences.user_ids, "switch_index"].to_numpy()
    genres = [()] + dataset.items["genres"].tolist()
    return dataset, sequences, switch, genres


def test_window_distances_layout():
    profiles, distance = item_profiles("genre", [(), ("A",), ("B",)])
    d = window_distances(np.array([1] * 6 + [2] * 4), profiles, window=4, distance=distance)
    # entry i: window h[i-3 : i+1] vs everything before it; defined once 4 items precede the window
    assert np.isnan(d[:7]).all()
    assert d[9] == pytest.approx(1.0)  # window = the four B, long-term = the six A
    assert 0 < d[7] < d[8] < d[9]


def test_migration_points_find_the_known_switch():
    _, sequences, switch, genres = _synthetic(length=30)
    profiles, distance = item_profiles("genre", genres)
    points = migration_points(sequences.items, profiles, window=10, distance=distance)
    assert (points >= 0).all()
    close = np.abs(points - switch) <= 2
    assert close.mean() >= 0.9, (points, switch)


def test_migration_points_with_item_vectors_and_noise():
    # category one-hot vectors plus noise, cosine distance; histories also keep 20% of
    # off-category items after the switch, so the change is not perfectly clean
    dataset, sequences, switch, _ = _synthetic(length=40, seed=1)
    rng = np.random.default_rng(0)
    categories = sorted(set(g[0] for g in dataset.items["genres"]))
    onehot = np.array([[0.0] * len(categories)] + [[float(g[0] == c) for c in categories] for g in dataset.items["genres"]])
    vectors = onehot + 0.3 * rng.standard_normal(onehot.shape)
    histories = []
    for h in sequences.items:
        h = h.copy()
        flip = rng.random(len(h)) < 0.2
        h[flip] = rng.integers(1, len(vectors), flip.sum())
        histories.append(h)
    profiles, distance = item_profiles("embedding", item_vectors=vectors)
    points = migration_points(histories, profiles, window=10, distance=distance)
    found = points >= 0
    assert found.mean() >= 0.8
    assert (np.abs(points[found] - switch[found]) <= 4).mean() >= 0.8, (points, switch)


def test_no_migration_no_point_and_shuffles_are_calibrated():
    _, sequences, _, genres = _synthetic(length=30)
    profiles, distance = item_profiles("genre", genres)
    # a user who never changes, and short histories without any window
    steady = [np.full(30, sequences.items[0][0])]
    assert migration_points(steady, profiles, threshold=0.1, distance=distance).tolist() == [-1]
    assert migration_points([np.array([1, 2, 3])], profiles, threshold=0.0, distance=distance).tolist() == [-1]
    assert null_threshold([np.array([1, 2, 3])], profiles) == float("inf")
    # time-shuffled histories have no migration: the calibrated threshold flags about 5% of them
    rng = np.random.default_rng(3)
    shuffled = [rng.permutation(h) for h in sequences.items for _ in range(5)]
    threshold = null_threshold(sequences.items, profiles, distance=distance, quantile=0.95, seed=11)
    false_alarms = (migration_points(shuffled, profiles, threshold=threshold, distance=distance) >= 0).mean()
    assert false_alarms <= 0.15


def test_migration_point_arguments_are_checked():
    profiles, _ = item_profiles("genre", [(), ("A",)])
    with pytest.raises(ValueError, match="distance"):
        migration_points([np.array([1] * 30)], profiles, threshold=0.1, distance="euclid")
    with pytest.raises(ValueError, match="window"):
        window_distances(np.array([1] * 30), profiles, window=0)


# --- population statistics ------------------------------------------------------------------


def test_population_stats_known_values():
    genre = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    stats = population_stats({"genre": genre, "embedding": 2 * genre ** 2, "reverse": -genre},
                             thresholds={"genre": (0.25,), "embedding": (0.1,)})
    g = stats["genre"]
    assert g["count"] == 6
    assert g["mean"] == pytest.approx(0.25)
    assert g["median"] == pytest.approx(0.25)
    assert g["min"] == 0.0 and g["max"] == 0.5
    assert g["migrating_cut"] == pytest.approx(0.4)  # top third: 0.5, 0.4
    assert g["share_above"] == {"0.25": pytest.approx(0.5)}
    assert stats["embedding"]["share_above"] == {"0.1": pytest.approx(0.5)}  # 0.18, 0.32, 0.5
    corr = stats["correlation"]
    assert corr["genre~embedding"]["spearman"] == pytest.approx(1.0)
    assert 0.9 < corr["genre~embedding"]["pearson"] < 1.0
    assert corr["genre~embedding"]["slice_agreement"] == pytest.approx(1.0)
    assert corr["genre~reverse"]["pearson"] == pytest.approx(-1.0)
    assert corr["genre~reverse"]["slice_agreement"] == pytest.approx(0.0)


def test_population_stats_single_array_and_nan():
    stats = population_stats(np.array([0.2, np.nan, 0.4]))
    assert set(stats) == {"score"}
    assert stats["score"]["count"] == 2
    assert stats["score"]["mean"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="same users"):
        population_stats({"a": np.zeros(3), "b": np.zeros(4)})


# --- encoder vectors ---------------------------------------------------------------------------


def test_item_text_vectors_with_a_tiny_bert(tmp_path):
    from tfrec_lm.bert import tiny_bert, tiny_tokenizer
    from tfrec_lm.drift import item_text_vectors

    texts = ["red sneakers 1", "blue novels 2", "red sneakers 1"]
    tokenizer = tiny_tokenizer(" ".join(texts).split(), tmp_path / "tok")
    bert = tiny_bert(tokenizer.vocab_size, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    vectors = item_text_vectors(texts, (bert, tokenizer))
    assert vectors.shape == (4, 16) and vectors.dtype == np.float32
    assert not vectors[0].any()  # padding row
    assert np.allclose(vectors[1], vectors[3], atol=1e-5) and not np.allclose(vectors[1], vectors[2])
    scores = embedding_migration_scores([np.array([1, 1, 3, 3]), np.array([1, 1, 2, 2])], vectors, recent=2)
    assert scores[0] == pytest.approx(0.0, abs=1e-6) and scores[1] > 0


# --- report ---------------------------------------------------------------------------------


def _category_vectors(dataset, seed=0):
    rng = np.random.default_rng(seed)
    categories = sorted(set(g[0] for g in dataset.items["genres"]))
    onehot = np.array([[0.0] * len(categories)] + [[float(g[0] == c) for c in categories] for g in dataset.items["genres"]])
    return (onehot + 0.2 * rng.standard_normal(onehot.shape)).astype(np.float32)


def _metrics_json(path, users):
    slice_values = {"HR@10": 0.3, "NDCG@10": 0.15, "MRR@10": 0.1, "HR@20": 0.5, "NDCG@20": 0.2, "MRR@20": 0.12}
    test = {name: {s: {**{k: v * f for k, v in slice_values.items()}, "count": c}
                   for s, c in (("all", users), ("migrating", users // 3), ("stable", users // 3))}
            for name, f in (("model", 1.5), ("most_popular", 1.0))}
    path.write_text(json.dumps({"config": {}, "test": test}))
    return path


def _colors(png) -> set:
    """Every pixel colour of a PNG, as upper-case "#RRGGBB"."""
    import matplotlib.image

    pixels = (matplotlib.image.imread(png)[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3)
    return {"#%02X%02X%02X" % tuple(c) for c in np.unique(pixels, axis=0)}


OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky blue": "#56B4E9", "bluish green": "#009E73",
             "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish purple": "#CC79A7"}
TAB10 = {"#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD"}  # matplotlib's default cycle: not colour-blind safe


def _pngs(folder):
    files = sorted(folder.glob("*.png"))
    for f in files:
        data = f.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, f
    return [f.name for f in files]


@needs_matplotlib
def test_report_writes_pages_and_plots(tmp_path):
    dataset, _ = synthetic_migration(num_users=24, length=30)
    metrics = _metrics_json(tmp_path / "metrics.json", 24)
    result = report(dataset, tmp_path / "out", encoder=_category_vectors(dataset), metrics_json=metrics, users=4)
    out = tmp_path / "out"
    assert _pngs(out) == ["score_distribution.png", "slice_metrics.png", "trajectories.png"]
    assert [p.name for p in result.images] == ["score_distribution.png", "trajectories.png", "slice_metrics.png"]
    md = result.markdown.read_text()
    page = result.html.read_text()
    for name in ("score_distribution.png", "trajectories.png", "slice_metrics.png"):
        assert f"]({name})" in md and f'src="{name}"' in page  # relative references
    assert "Pearson" in md and "most_popular" in md
    # The plots draw with the Okabe-Ito palette: slices vermillion/blue, bars blue/orange, the
    # genre areas, the threshold and the embedding curve; none of matplotlib's default colours.
    o = OKABE_ITO
    expected = {"score_distribution.png": {o["vermillion"], o["blue"], o["black"]},
                "trajectories.png": {o["blue"], o["orange"], o["bluish green"], o["vermillion"], o["reddish purple"]},
                "slice_metrics.png": {o["blue"], o["orange"]}}
    for name, colors in expected.items():
        found = _colors(out / name)
        assert colors <= found, (name, colors - found)
        assert not TAB10 & found, (name, TAB10 & found)
    # Flag rates are measured, not quoted: synthetic users all switch category, so every one is
    # flagged on the real histories and few on shuffled ones.
    stats = result.stats
    for kind in ("genre", "embedding"):
        real = float((result.analysis.points[kind] >= 0).mean())
        assert stats[kind]["with_point"] == real == 1.0 and 0.0 <= stats[kind]["shuffled_with_point"] <= 0.25
        assert (f"**{kind}** score: 100.0% of users flagged on their real histories, "
                f"{100 * stats[kind]['shuffled_with_point']:.1f}% on the shuffled ones") in md
    assert "the false-alarm rate under no drift" in md and "interests do move" in md
    assert "What a migration point means" in page and "<strong>genre</strong> score: 100.0%" in page
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    frame = pd.read_csv(result.scores_csv)
    assert len(frame) == 24
    assert {"genre_score", "embedding_score", "genre_point", "embedding_point", "slice"} <= set(frame.columns)
    assert (frame["genre_point"] == 15).mean() >= 0.9  # synthetic users switch at position 15
    assert set(result.stats) == {"genre", "embedding", "correlation"}


@needs_matplotlib
def test_report_without_metrics_or_encoder(tmp_path):
    dataset, _ = synthetic_migration(num_users=12, length=24)
    result = report(dataset, tmp_path, users=2)
    assert _pngs(tmp_path) == ["score_distribution.png", "trajectories.png"]
    assert set(result.stats) == {"genre"}
    assert "| statistic | genre |\n" in result.markdown.read_text()  # no embedding column


@needs_matplotlib
def test_report_without_genres_uses_the_embedding_score(tmp_path):
    dataset, _ = synthetic_migration(num_users=12, length=24)
    vectors = _category_vectors(dataset)
    dataset.items["genres"] = [()] * len(dataset.items)
    result = report(dataset, tmp_path, encoder=vectors, users=["u0", "u3"])
    assert _pngs(tmp_path) == ["score_distribution.png", "trajectories.png"]
    assert result.analysis.slice_kind == "embedding" and set(result.stats) == {"embedding"}
    with pytest.raises(DataError, match="nothing to measure"):
        analyze(dataset)
    with pytest.raises(DataError, match="unknown user"):
        report(dataset, tmp_path, encoder=vectors, users=["nobody"])


def test_load_metrics_rejects_other_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"validation_ndcg_at_10": [0.1]}))
    with pytest.raises(DataError, match="'test'"):
        load_metrics(bad)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a readable"):
        load_metrics(bad)
    with pytest.raises(DataError, match="no such"):
        load_metrics(tmp_path / "missing.json")


# --- command line ---------------------------------------------------------------------------


def _write_files(tmp_path, num_users=15, length=24):
    dataset, _ = synthetic_migration(num_users=num_users, length=length)
    interactions = tmp_path / "interactions.csv"
    items = tmp_path / "items.csv"
    dataset.interactions.to_csv(interactions, index=False)
    frame = dataset.items[["item_id", "title"]].copy()
    frame["genres"] = ["|".join(g) for g in dataset.items["genres"]]
    frame.to_csv(items, index=False)
    return interactions, items


@needs_matplotlib
def test_cli_report_and_scores(tmp_path, capsys):
    interactions, items = _write_files(tmp_path)
    metrics = _metrics_json(tmp_path / "metrics.json", 15)
    files = ["--data", "files", "--interactions", str(interactions), "--items", str(items), "--no-encoder"]
    assert main(["report", *files, "--out", str(tmp_path / "rep"), "--metrics", str(metrics), "--users", "3"]) == 0
    assert _pngs(tmp_path / "rep") == ["score_distribution.png", "slice_metrics.png", "trajectories.png"]
    assert (tmp_path / "rep" / "report.md").is_file() and (tmp_path / "rep" / "report.html").is_file()
    assert "genre     score: mean" in capsys.readouterr().out
    assert main(["scores", *files, "--out", str(tmp_path / "s" / "scores.csv")]) == 0
    frame = pd.read_csv(tmp_path / "s" / "scores.csv")
    assert len(frame) == 15 and "genre_point" in frame.columns


def test_cli_prints_bad_rows_once_and_writes_every_one(tmp_path, capsys):
    interactions, items = _write_files(tmp_path)
    good = interactions.read_text().splitlines()
    interactions.write_text("\n".join(good + [f"u0,cam0,soon-{k},4" for k in range(7)]) + "\n")
    files = ["--data", "files", "--interactions", str(interactions), "--items", str(items), "--no-encoder"]
    assert main(["scores", *files, "--out", str(tmp_path / "s" / "scores.csv")]) == 0
    out = capsys.readouterr().out
    listing = tmp_path / "s" / "scores.bad_rows.csv"
    assert out.count("7 bad rows left out") == 1 and "and 2 more" in out and str(listing) in out
    frame = pd.read_csv(listing)
    assert frame["line"].tolist() == list(range(len(good) + 1, len(good) + 8))
    assert frame["value"].tolist() == [f"soon-{k}" for k in range(7)] and set(frame["column"]) == {"timestamp"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["report", "--data", "files", "--interactions", "{tmp}/missing.csv", "--no-encoder"], "missing.csv"),
        (["scores", "--data", "files", "--no-encoder"], "--interactions"),
        (["report", "--data", "files", "--interactions", "{inter}", "--no-encoder", "--metrics", "{tmp}/none.json"],
         "none.json"),
        (["scores", "--data", "files", "--interactions", "{inter}", "--no-encoder"], "nothing to measure"),
        (["report", "--bogus"], "unrecognized"),
        (["scores", "--data", "files", "--interactions", "{inter}", "--items", "{items}", "--encoder", "{tmp}"],
         "config.json"),
    ],
)
def test_cli_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    interactions, items = _write_files(tmp_path, num_users=6)
    args = [a.format(tmp=tmp_path, inter=interactions, items=items) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and message in err[-1]

"""Tests of the demo bundle: corpus, simulated annotators, example pairs and the build."""

from __future__ import annotations

import json
import random

import pytest
import torch

from mrm import demo, demo_build
from mrm.demo import (
    ATTRIBUTES,
    DEMO_DIR,
    Annotator,
    CorpusError,
    PopulationConfig,
    example_pairs,
    load_corpus,
    make_annotators,
    preference_probability,
    sample_pair,
    simulate_labels,
    summary_rows,
)
from mrm.demo_build import BuildConfig, build_bundle

EXAMPLES_DIR = demo.REPO_ROOT / "examples"


@pytest.fixture(scope="module")
def posts():
    return load_corpus()


@pytest.fixture(scope="module")
def encoder():
    from mrm.encoders import load_encoder

    return load_encoder("demo")


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def valid_record(post_id="x1"):
    summary = {"text": "A summary.", "attributes": dict.fromkeys(ATTRIBUTES, 0)}
    other = {"text": "Another summary.", "attributes": dict.fromkeys(ATTRIBUTES, 1)}
    return {"post_id": post_id, "subreddit": "test", "title": "T", "post": "Body.", "summaries": [summary, other]}


# ----------------------------------------------------------------------------- corpus


def test_corpus_has_enough_posts(posts):
    assert len(posts) >= 40


def test_corpus_posts_have_four_summaries(posts):
    too_few = [p.post_id for p in posts if len(p.summaries) < 4]
    assert too_few == []


def test_corpus_summaries_have_all_attributes(posts):
    for post in posts:
        for summary in post.summaries:
            assert set(summary.attributes) == set(ATTRIBUTES), post.post_id


def test_corpus_has_no_duplicate_summaries(posts):
    texts = [s.text.strip().lower() for _, s in summary_rows(posts)]
    assert len(texts) == len(set(texts))


def test_corpus_post_bodies_are_60_to_150_words(posts):
    out_of_range = {p.post_id: len(p.post.split()) for p in posts if not 60 <= len(p.post.split()) <= 150}
    assert out_of_range == {}


def test_corpus_length_attribute_matches_word_count(posts):
    short = [len(s.text.split()) for _, s in summary_rows(posts) if s.attributes["length"] == 0]
    long = [len(s.text.split()) for _, s in summary_rows(posts) if s.attributes["length"] == 1]
    assert max(short) < min(long)


def test_corpus_attributes_split_two_against_two(posts):
    # Documented design: on every post each attribute is 1 in exactly half of the summaries.
    for post in posts:
        for name in ATTRIBUTES:
            ones = sum(s.attributes[name] for s in post.summaries)
            assert 2 * ones == len(post.summaries), (post.post_id, name)


def test_corpus_attribute_combinations_differ_within_post(posts):
    for post in posts:
        combos = [tuple(s.attributes[name] for name in ATTRIBUTES) for s in post.summaries]
        assert len(set(combos)) == len(combos), post.post_id


def test_post_prompt_contains_title_and_body(posts):
    prompt = posts[0].prompt
    assert prompt.startswith(f"SUBREDDIT: r/{posts[0].subreddit}\nTITLE: {posts[0].title}\nPOST: ")
    assert prompt.endswith(posts[0].post)


def test_load_corpus_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        load_corpus(tmp_path / "absent.jsonl")


def test_load_corpus_invalid_json_names_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps(valid_record()) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"corpus.jsonl:2 is not valid JSON"):
        load_corpus(path)


def test_load_corpus_rejects_non_binary_attribute(tmp_path):
    record = valid_record()
    record["summaries"][0]["attributes"]["tone"] = 2
    with pytest.raises(CorpusError, match="non-binary attributes"):
        load_corpus(write_lines(tmp_path / "corpus.jsonl", [record]))


def test_load_corpus_rejects_missing_attribute(tmp_path):
    record = valid_record()
    del record["summaries"][1]["attributes"]["hedging"]
    with pytest.raises(CorpusError, match="hedging"):
        load_corpus(write_lines(tmp_path / "corpus.jsonl", [record]))


def test_load_corpus_rejects_duplicate_post_id(tmp_path):
    with pytest.raises(CorpusError, match="duplicate post_id 'x1'"):
        load_corpus(write_lines(tmp_path / "corpus.jsonl", [valid_record(), valid_record()]))


def test_load_corpus_rejects_single_summary(tmp_path):
    record = valid_record()
    record["summaries"] = record["summaries"][:1]
    with pytest.raises(CorpusError, match="at least two summaries"):
        load_corpus(write_lines(tmp_path / "corpus.jsonl", [record]))


def test_load_corpus_rejects_empty_file(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="contains no posts"):
        load_corpus(path)


# ----------------------------------------------------------------------------- sample_pair


def test_sample_pair_gives_two_summaries_of_one_post(posts):
    for seed in range(20):
        pair = sample_pair(seed, posts)
        assert pair.first != pair.second
        assert pair.first in pair.post.summaries
        assert pair.second in pair.post.summaries


def test_sample_pair_same_seed_same_pair(posts):
    assert sample_pair(3, posts) == sample_pair(3, posts)


def test_sample_pair_accepts_generator(posts):
    assert sample_pair(random.Random(5), posts) == sample_pair(5, posts)


def test_sample_pair_defaults_to_corpus():
    assert sample_pair(0).post.post_id in {p.post_id for p in load_corpus()}


# ----------------------------------------------------------------------------- annotators and labels


def test_make_annotators_same_seed_equal():
    config = PopulationConfig()
    assert make_annotators(config, seed=1) == make_annotators(config, seed=1)


def test_make_annotators_seed_changes_weights():
    config = PopulationConfig()
    assert make_annotators(config, seed=1) != make_annotators(config, seed=2)


def test_make_annotators_cycles_archetypes():
    annotators = make_annotators(PopulationConfig(num_annotators=8), seed=0)
    names = list(demo.ARCHETYPES)
    assert [a.archetype for a in annotators] == names + names


def test_simulate_labels_same_seed_equal(posts):
    config = PopulationConfig(num_annotators=6)
    annotators = make_annotators(config, seed=0)
    assert simulate_labels(posts, annotators, config, seed=0) == simulate_labels(posts, annotators, config, seed=0)


def test_simulate_labels_seed_changes_labels(posts):
    config = PopulationConfig(num_annotators=6)
    annotators = make_annotators(config, seed=0)
    assert simulate_labels(posts, annotators, config, seed=0) != simulate_labels(posts, annotators, config, seed=1)


def test_simulate_labels_pair_counts(posts):
    config = PopulationConfig(num_annotators=4, train_pairs=30, val_pairs=15)
    users = simulate_labels(posts, make_annotators(config, seed=0), config, seed=0)
    for entries in users.values():
        assert sum(e["split"] == "train" for e in entries) == 30
        assert sum(e["split"] == "val" for e in entries) == 15


def test_simulate_labels_val_posts_unseen_in_train(posts):
    config = PopulationConfig(num_annotators=4)
    users = simulate_labels(posts, make_annotators(config, seed=0), config, seed=0)
    for entries in users.values():
        train_posts = {e["conversation_id"] for e in entries if e["split"] == "train"}
        val_posts = {e["conversation_id"] for e in entries if e["split"] == "val"}
        assert train_posts.isdisjoint(val_posts)


def test_simulate_labels_rows_match_texts(posts):
    config = PopulationConfig(num_annotators=2)
    users = simulate_labels(posts, make_annotators(config, seed=0), config, seed=0)
    rows = summary_rows(posts)
    for entry in users["annotator_0"]:
        post, chosen = rows[entry["chosen_idx"]]
        rejected_post, rejected = rows[entry["rejected_idx"]]
        assert chosen.text == entry["chosen"]
        assert rejected.text == entry["rejected"]
        assert post is rejected_post
        assert entry["prompt"] == post.prompt


def test_simulate_labels_too_many_pairs_raises(posts):
    config = PopulationConfig(num_annotators=2, val_pairs=10_000)
    with pytest.raises(ValueError, match="10000 val pairs requested"):
        simulate_labels(posts, make_annotators(config, seed=0), config, seed=0)


def test_preference_probability_value():
    weights = torch.tensor([1.0, -0.5, 0.0, 0.0])
    a = torch.tensor([1.0, 0.0, 1.0, 0.0])
    b = torch.tensor([0.0, 1.0, 0.0, 0.0])
    expected = torch.sigmoid(torch.tensor(2.0 * 1.5))
    assert torch.isclose(preference_probability(weights, a, b, beta=2.0), expected)


def label_rate(posts, weights, attribute, beta=3.0):
    """Share of a simulated annotator's labels where the summary with `attribute` = 1 is chosen."""
    config = PopulationConfig(num_annotators=2, train_pairs=150, val_pairs=60, beta=beta)
    annotators = [Annotator("strong", "test", tuple(weights)), Annotator("other", "test", (0.0,) * len(ATTRIBUTES))]
    rows = summary_rows(posts)
    users = simulate_labels(posts, annotators, config, seed=0)
    picks = []
    for entry in users["strong"]:
        chosen = rows[entry["chosen_idx"]][1].attributes[attribute]
        rejected = rows[entry["rejected_idx"]][1].attributes[attribute]
        if chosen != rejected:
            picks.append(chosen)
    return sum(picks) / len(picks)


def test_labels_strong_weight_prefers_attribute(posts):
    assert label_rate(posts, (3.0, 0.0, 0.0, 0.0), "length") > 0.9


def test_labels_negative_weight_avoids_attribute(posts):
    assert label_rate(posts, (0.0, 0.0, 0.0, -3.0), "hedging") < 0.1


def test_labels_zero_weight_near_chance(posts):
    assert 0.35 < label_rate(posts, (0.0, 0.0, 0.0, 0.0), "tone") < 0.65


def test_noise_ceiling_perfect_without_noise(posts):
    # With a huge beta every label follows the weights, so the true weights score 1.
    # No signed subset of these weights sums to 0, so no pair has a zero margin.
    config = PopulationConfig(num_annotators=2, beta=1e6)
    annotators = [Annotator("a", "test", (1.0, 0.7, -0.4, 0.2)), Annotator("b", "test", (-0.2, 0.4, 1.0, -0.7))]
    users = simulate_labels(posts, annotators, config, seed=0)
    ceiling = demo.noise_ceiling(posts, annotators, users)
    assert ceiling == {"a": 1.0, "b": 1.0}


# ----------------------------------------------------------------------------- example pairs


@pytest.mark.parametrize("name", ["labelled_pairs.csv", "labelled_pairs.jsonl"])
def test_example_pairs_files_match_generator(posts, name):
    from mrm.pairs import read_pairs

    result = read_pairs(EXAMPLES_DIR / name)
    assert result.pairs == example_pairs(posts)


@pytest.mark.parametrize("name", ["labelled_pairs.csv", "labelled_pairs.jsonl"])
def test_example_pairs_files_read_cleanly(name):
    from mrm.pairs import read_pairs

    result = read_pairs(EXAMPLES_DIR / name)
    assert result.errors == []
    assert result.warnings == []


def test_example_pairs_prefer_specific_confident(posts):
    texts = {s.text: s for _, s in summary_rows(posts)}
    weights = torch.tensor(demo.EXAMPLE_READER_WEIGHTS)
    for pair in example_pairs(posts):
        chosen, rejected = texts[pair["chosen"]], texts[pair["rejected"]]
        assert float(weights @ chosen.vector()) > float(weights @ rejected.vector())


# ----------------------------------------------------------------------------- build


def small_build_config(out) -> BuildConfig:
    return BuildConfig(
        out=str(out),
        seed=3,
        epochs=2,
        log_freq=1,
        global_head_steps=5,
        population=PopulationConfig(num_annotators=8, train_pairs=10, val_pairs=5),
    )


@pytest.fixture(scope="module")
def small_builds(tmp_path_factory, encoder):
    first = build_bundle(small_build_config(tmp_path_factory.mktemp("first")), encoder=encoder)
    second = build_bundle(small_build_config(tmp_path_factory.mktemp("second")), encoder=encoder)
    return first, second


def test_build_same_seed_same_checkpoint(small_builds):
    first, second = small_builds
    assert (first.out / "model.safetensors").read_bytes() == (second.out / "model.safetensors").read_bytes()


@pytest.mark.parametrize("name", ["config.json", "card.json", "results.json", "metrics.jsonl", "demo_prefs.json", "README.md"])
def test_build_same_seed_same_files(small_builds, name):
    first, second = small_builds
    assert (first.out / name).read_bytes() == (second.out / name).read_bytes()


def test_build_same_seed_same_embeddings(small_builds):
    first, second = small_builds
    assert torch.equal(torch.load(first.out / "demo_prefs.pt"), torch.load(second.out / "demo_prefs.pt"))


def test_deterministic_torch_restores_settings():
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    with demo_build.deterministic_torch():
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_build_config_names_demo_encoder(small_builds, encoder):
    config = json.loads((small_builds[0].out / "config.json").read_text(encoding="utf-8"))
    assert config["encoder_id"] == "demo"
    assert config["encoder_revision"] == encoder.revision
    assert config["dataset"] == "demo"
    assert config["in_dim"] == encoder.hidden_size


def test_build_checkpoint_loads(small_builds, encoder):
    from mrm.model import load_mrm

    model = load_mrm(small_builds[0].out)
    assert model.in_dim == encoder.hidden_size
    assert model.num_bases == 4


def test_build_card_has_all_figures(small_builds):
    card = json.loads((small_builds[0].out / "card.json").read_text(encoding="utf-8"))
    for key in ("mrm_adapted", "mrm_meta_init", "global_bt", "noise_ceiling"):
        assert set(card[key]) == {"seen", "unseen", "overall", "worst10"}, key


def test_build_card_has_label_curve(small_builds):
    card = json.loads((small_builds[0].out / "card.json").read_text(encoding="utf-8"))
    assert [row["labels"] for row in card["unseen_by_labels"]] == list(demo.LABEL_COUNTS)


def test_build_writes_all_annotators(small_builds):
    annotators = json.loads((small_builds[0].out / "annotators.json").read_text(encoding="utf-8"))
    assert len(annotators) == 8
    assert {a["split"] for a in annotators} == {"seen", "unseen"}


# ----------------------------------------------------------------------------- command line


def test_parse_build_config_sets_population():
    config = demo_build.parse_build_config(["--epochs", "3", "--num_annotators", "10", "--beta", "1.5", "--out", "x"])
    assert config.epochs == 3
    assert config.out == "x"
    assert config.population.num_annotators == 10
    assert config.population.beta == 1.5


def test_main_unknown_subcommand_returns_2(capsys):
    assert demo_build.main(["train"]) == 2
    assert "unknown demo subcommand 'train'" in capsys.readouterr().err


def test_main_without_subcommand_returns_2(capsys):
    assert demo_build.main([]) == 2


def test_main_build_bad_corpus_returns_2(tmp_path, capsys):
    assert demo_build.main(["build", "--corpus", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "out")]) == 2
    assert "corpus file not found" in capsys.readouterr().err


def test_main_build_invalid_setting_returns_2(tmp_path, capsys):
    assert demo_build.main(["build", "--val_post_fraction", "1.5", "--out", str(tmp_path / "out")]) == 2
    assert "val_post_fraction=1.5" in capsys.readouterr().err


def test_main_build_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo_build.main(["build", "--help"])
    assert exit_info.value.code == 0
    assert "--num_annotators" in capsys.readouterr().out


# ----------------------------------------------------------------------------- committed bundle


def test_committed_config_names_demo_encoder():
    config = json.loads((DEMO_DIR / "config.json").read_text(encoding="utf-8"))
    assert config["encoder_id"] == "demo"
    assert config["dataset"] == "demo"


def test_committed_config_in_dim_matches_encoder(encoder):
    config = json.loads((DEMO_DIR / "config.json").read_text(encoding="utf-8"))
    assert config["in_dim"] == encoder.hidden_size


def test_committed_checkpoint_matches_encoder(encoder):
    from mrm.model import load_mrm

    assert load_mrm(DEMO_DIR).in_dim == encoder.hidden_size


def test_committed_embeddings_match_encoder(encoder):
    from mrm.data import read_embedding_files

    data = read_embedding_files(DEMO_DIR / "demo_prefs.pt", DEMO_DIR / "demo_prefs.json")
    assert data.hidden_size == encoder.hidden_size


def test_committed_card_shows_adaptation_gain():
    card = json.loads((DEMO_DIR / "card.json").read_text(encoding="utf-8"))
    assert card["mrm_adapted"]["overall"] > card["mrm_meta_init"]["overall"] + 0.05


def test_committed_card_few_labels_beat_init():
    card = json.loads((DEMO_DIR / "card.json").read_text(encoding="utf-8"))
    five = next(row["accuracy"] for row in card["unseen_by_labels"] if row["labels"] == 5)
    assert five > card["mrm_meta_init"]["unseen"]


def test_committed_embeddings_match_corpus(posts, encoder):
    # The committed rows must be the current corpus encoded now; a corpus edit needs a rebuild.
    rows = summary_rows(posts)
    sample = [0, len(rows) // 2, len(rows) - 1]
    fresh = encoder.encode([rows[i][0].prompt for i in sample], [rows[i][1].text for i in sample]).embeddings
    committed = torch.load(DEMO_DIR / "demo_prefs.pt")[sample]
    assert torch.allclose(fresh, committed, atol=1e-4)

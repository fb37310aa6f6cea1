"""The shadow's repository pointer (crash-consistent promote and discard) and its comparisons."""

from __future__ import annotations

import pytest

from multitask_serve.modelrepo.repository import SHADOW, ModelRepository, RepositoryError
from multitask_serve.service.outputs import COSINE_AGREES, FORMS
from tests.unit.test_spec import HEAD


@pytest.fixture
def repo(tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    repo.add_head(HEAD, b"served")
    repo.add_head(HEAD, b"candidate", make_current=False)
    return repo


def test_a_shadow_pointer_names_a_stored_version_that_stays_unserved(repo):
    assert repo.shadow_version("sentiment") is None
    repo.set_shadow("sentiment", 2)
    assert repo.shadow_version("sentiment") == 2 and repo.current_version("sentiment") == 1
    with pytest.raises(RepositoryError):
        repo.set_shadow("sentiment", 9)


def test_promote_moves_current_then_drops_the_pointer(repo):
    repo.set_shadow("sentiment", 2)
    assert repo.promote_shadow("sentiment") == 2
    assert repo.current_version("sentiment") == 2 and repo.shadow_version("sentiment") is None
    assert not (repo.root / "heads" / "sentiment" / SHADOW).exists()
    with pytest.raises(RepositoryError):
        repo.promote_shadow("sentiment")


def test_a_promotion_interrupted_between_its_renames_reads_as_promoted(repo):
    repo.set_shadow("sentiment", 2)
    repo.set_current("sentiment", 2)  # the crash came before the shadow pointer went
    assert repo.current_version("sentiment") == 2 and repo.shadow_version("sentiment") is None


def test_discard_drops_the_pointer_and_keeps_the_version(repo):
    repo.set_shadow("sentiment", 2)
    repo.clear_shadow("sentiment")
    assert repo.shadow_version("sentiment") is None and repo.versions("sentiment") == [1, 2]
    repo.remove_task("sentiment")
    repo.clear_shadow("sentiment")  # a task already removed has nothing left to clear


def _cls(label: str, **scores: float) -> dict:
    return {"label": label, "score": scores[label], "scores": scores}


def test_classifications_agree_on_labels_and_average_score_differences():
    served = [_cls("pos", pos=0.9, neg=0.1), _cls("neg", pos=0.4, neg=0.6)]
    candidate = [_cls("pos", pos=0.7, neg=0.3), _cls("pos", pos=0.6, neg=0.4)]
    found = FORMS["classes"].compare(served, candidate)
    assert found.agreed == 1 and found.texts == 2
    assert (found.score_diff_sum, found.score_diff_count) == (pytest.approx(0.4), 2)


def test_entity_spans_match_on_type_and_offsets():
    per, loc = {"entity": "PER", "start": 0, "end": 4}, {"entity": "LOC", "start": 9, "end": 14}
    served = [[{**per, "score": 0.9}, {**loc, "score": 0.8}], []]
    candidate = [[{**per, "score": 0.7}, {**loc, "start": 10, "score": 0.8}], []]
    found = FORMS["spans"].compare(served, candidate)
    assert (found.spans_matched, found.spans_served, found.spans_candidate) == (1, 2, 2)
    assert found.agreed == 1  # only the text without entities agrees fully
    assert (found.score_diff_sum, found.score_diff_count) == (pytest.approx(0.2), 1)


def test_embeddings_agree_above_the_cosine_threshold():
    found = FORMS["vector"].compare([[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]])
    assert (found.cosine_sum, found.cosine_min) == (pytest.approx(1.0), pytest.approx(0.0))
    assert found.agreed == 1 and COSINE_AGREES < 1.0


def test_a_comparison_adds_up_across_batches():
    total = FORMS["vector"].compare([[1.0, 0.0]], [[0.6, 0.8]])
    total.add(FORMS["vector"].compare([[1.0, 0.0]], [[1.0, 0.0]]))
    assert (total.texts, total.agreed) == (2, 1)
    assert (total.cosine_sum, total.cosine_min) == (pytest.approx(1.6), pytest.approx(0.6))
    assert total.mean_abs_score_diff == pytest.approx((0.4 + 0.8) / 2 / 2)

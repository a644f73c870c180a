"""Locality kernels: RWMD in RoPE space is 0 for identical prompts and grows with removed content;
its ground cost and normalisation are options, set from the command line too."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from ropelime.kernels import kernel_weights, mask_cosine_distance, weights_from_distances
from ropelime.perturb import perturb_tokens
from ropelime.rope import rwmd
from ropelime.schema import ExplainConfig


def test_rwmd_identity_symmetry_and_growth():
    torch.manual_seed(0)
    a = torch.randn(30, 16)
    assert rwmd(a, a) == pytest.approx(0.0, abs=1e-3)  # distances by matrix product: ~1e-3 rounding
    b = torch.randn(25, 16)
    assert rwmd(a, b) == rwmd(b, a) > 0
    assert rwmd(a, a[:20]) > 0
    assert rwmd(a, a[:10]) > rwmd(a, a[:20])


def test_rwmd_rope_grows_with_removed_content(tiny_surrogate):
    prompt = "The sky is blue. Paris is the capital of France. Cats sleep a lot. The bridge was designed by Mara."
    spans = [(0, 17), (17, 49), (49, 67), (67, len(prompt))]
    encoded = tiny_surrogate.encode_prompt(prompt, None, spans)
    base = tiny_surrogate.rope_vectors(encoded.ids, encoded.prompt_tokens)
    distances = []
    for removed in range(4):
        # remove the last `removed` features: nested masks, no token before them moves, so every
        # removed token loses its exact match and the nearest-neighbour costs can only grow
        mask = np.arange(4) < 4 - removed
        ids, keep = perturb_tokens(encoded, mask, "delete", tiny_surrogate.placeholder_id)
        distances.append(rwmd(base, tiny_surrogate.rope_vectors(ids, keep)))
    assert distances[0] == pytest.approx(0.0, abs=1e-3)
    assert distances[0] < distances[1] < distances[2] < distances[3]
    # a placeholder keeps positions: only the replaced tokens move
    ids, keep = perturb_tokens(encoded, np.array([1, 0, 1, 1], bool), "placeholder", tiny_surrogate.placeholder_id)
    assert len(ids) == len(encoded.ids)
    assert rwmd(base, tiny_surrogate.rope_vectors(ids, keep)) > 0


def test_kernel_weights():
    masks = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]], bool)
    cosine = kernel_weights("cosine", masks)
    assert cosine[0] == 1.0 and cosine[0] > cosine[1] > cosine[2] > 0
    np.testing.assert_allclose(mask_cosine_distance(masks)[0], 0)
    assert np.all(kernel_weights("uniform", masks) == 1)
    weights = kernel_weights("rwmd_rope", masks, distances=np.array([0.0, 2.0, 8.0]))
    assert weights[0] == 1 and weights[0] > weights[1] > weights[2]
    # normalised: scaling all distances does not change the weights
    np.testing.assert_allclose(weights_from_distances(np.array([0, 2, 8.0]), 0.5),
                               weights_from_distances(np.array([0, 20, 80.0]), 0.5))


def test_removing_every_token_still_weighs_a_little():
    weights = weights_from_distances(np.array([0.0, 2.0, np.inf]), 0.5)
    assert weights[0] == 1 and weights[2] == weights[1] > 0


def test_cosine_cost_ignores_vector_lengths():
    torch.manual_seed(0)
    a, b = torch.randn(30, 16), torch.randn(25, 16)
    assert rwmd(a, a, "cosine") == pytest.approx(0.0, abs=1e-6)
    assert rwmd(a, b, "cosine") == pytest.approx(rwmd(b, a, "cosine")) and 0 < rwmd(a, b, "cosine") <= 2
    # scaling a set moves every Euclidean cost but no angle
    assert rwmd(3 * a, b, "cosine") == pytest.approx(rwmd(a, b, "cosine"), rel=1e-5)
    assert rwmd(3 * a, b, "euclidean") > 2 * rwmd(a, b, "euclidean")
    # the cosine cost of a vector to itself scaled is 0; the Euclidean one is not
    assert rwmd(a, 3 * a, "cosine") == pytest.approx(0.0, abs=1e-6) and rwmd(a, 3 * a) > 0
    # the two costs rank removals alike: dropping more tokens costs more
    assert rwmd(a, a[:10], "cosine") > rwmd(a, a[:20], "cosine") > 0
    with pytest.raises(ValueError, match="unknown kernel cost"):
        rwmd(a, b, "manhattan")  # type: ignore[arg-type]


def test_normalise_divides_by_the_largest_distance():
    masks = np.ones((3, 4), bool)
    far = np.array([0.0, 0.2, 0.4])  # largest distance 0.4: normalising stretches it to 1
    normalised = kernel_weights("rwmd_rope", masks, distances=far)
    raw = kernel_weights("rwmd_rope", masks, distances=far, normalise=False)
    np.testing.assert_allclose(raw, np.sqrt(np.exp(-far ** 2 / 0.5 ** 2)))
    np.testing.assert_allclose(normalised, np.sqrt(np.exp(-(far / 0.4) ** 2 / 0.5 ** 2)))
    assert raw[0] == normalised[0] == 1 and np.all(raw[1:] > normalised[1:])
    unit = np.array([0.0, 0.5, 1.0, np.inf])  # largest finite distance 1: nothing to divide by
    np.testing.assert_array_equal(weights_from_distances(unit, 0.5, normalise=False),
                                  weights_from_distances(unit, 0.5, normalise=True))
    # only rwmd_rope has distances to normalise
    drops = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]], bool)
    for kernel in ("cosine", "uniform"):
        np.testing.assert_array_equal(kernel_weights(kernel, drops, normalise=False), kernel_weights(kernel, drops))


def test_rwmd_rope_cost_is_threaded_to_the_surrogate_vectors(tiny_surrogate):
    from ropelime.rope import RWMDToPrompt

    prompt = "The sky is blue. Paris is the capital of France. Cats sleep a lot."
    encoded = tiny_surrogate.encode_prompt(prompt, None, [(0, 17), (17, 49), (49, len(prompt))])
    perturbed = [perturb_tokens(encoded, np.array(m, bool), "delete", tiny_surrogate.placeholder_id)
                 for m in ([1, 1, 1], [1, 0, 1], [0, 0, 1])]
    euclidean = np.array([RWMDToPrompt(tiny_surrogate.rope_vectors, encoded)(*p) for p in perturbed])
    cosine = np.array([RWMDToPrompt(tiny_surrogate.rope_vectors, encoded, "cosine")(*p) for p in perturbed])
    assert euclidean[0] == pytest.approx(0.0, abs=1e-3) and cosine[0] == pytest.approx(0.0, abs=1e-6)
    assert np.all(cosine[1:] > 0) and np.all(cosine <= 2) and not np.allclose(cosine, euclidean)


def method_config(argv: list[str]) -> ExplainConfig:
    """The config `ropelime explain` / `ropelime eval` build from these method options."""
    from ropelime.options import METHOD, add_options, config_from_args

    parser = argparse.ArgumentParser()
    add_options(parser, METHOD)
    return config_from_args(parser.parse_args(argv), METHOD)


def test_cli_kernel_options_default_to_the_config():
    default = method_config([])
    assert (default.kernel_cost, default.kernel_normalise) == ("euclidean", True) == \
        (ExplainConfig().kernel_cost, ExplainConfig().kernel_normalise)
    chosen = method_config(["--kernel-cost", "cosine", "--no-kernel-normalise", "--kernel-width", "0.3"])
    assert (chosen.kernel_cost, chosen.kernel_normalise, chosen.kernel_width) == ("cosine", False, 0.3)
    assert method_config(["--no-kernel-normalise", "--kernel-normalise"]).kernel_normalise is True
    with pytest.raises(SystemExit):
        method_config(["--kernel-cost", "manhattan"])


def test_cli_explain_fits_with_the_kernel_options(tiny_model_dir, capsys):
    from ropelime.cli import main

    prompt = "The sky is blue. Paris is the capital of France. Cats sleep a lot."
    assert main(["explain", "--prompt", prompt, "--response", "Paris.", "--surrogate", str(tiny_model_dir),
                 "--device", "cpu", "--budget", "4", "--kernel-cost", "cosine", "--no-kernel-normalise",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["config"]["kernel_cost"], result["config"]["kernel_normalise"]) == ("cosine", False)
    assert len(result["features"]) == 3 and all(np.isfinite(f["score"]) for f in result["features"])

"""Locality kernels: RWMD in RoPE space is 0 for identical prompts and grows with removed content."""

from __future__ import annotations

import numpy as np
import torch

from ropelime.kernels import kernel_weights, mask_cosine_distance, rwmd, weights_from_distances
from ropelime.perturb import perturb_tokens


def test_rwmd_identity_symmetry_and_growth():
    torch.manual_seed(0)
    a = torch.randn(30, 16)
    assert rwmd(a, a) == 0.0
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
    assert distances[0] == 0.0
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
    weights = kernel_weights("rwmd_rope", masks, rwmd_distances=np.array([0.0, 2.0, 8.0]))
    assert weights[0] == 1 and weights[0] > weights[1] > weights[2]
    # normalised: scaling all distances does not change the weights
    np.testing.assert_allclose(weights_from_distances(np.array([0, 2, 8.0]), 0.5),
                               weights_from_distances(np.array([0, 20, 80.0]), 0.5))


def test_removing_every_token_still_weighs_a_little():
    weights = weights_from_distances(np.array([0.0, 2.0, np.inf]), 0.5)
    assert weights[0] == 1 and weights[2] == weights[1] > 0

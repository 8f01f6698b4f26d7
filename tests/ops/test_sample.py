import numpy as np
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from tfrcnn.ops.sample import add_gt_as_proposals, assign_gt_proposals_to_themselves, random_sample


def sample(gt_inds, num, pos_fraction, seed=(1, 2), **kwargs):
    idx, valid, positive = random_sample(tf.constant([gt_inds], tf.int32), num, pos_fraction, seed, **kwargs)
    return idx[0].numpy(), valid[0].numpy(), positive[0].numpy()


def test_hand_computed_counts():
    # 3 positives (slots 0, 1, 6), 4 negatives (2, 3, 4, 7), 1 ignored (5).
    gt_inds = [1, 2, 0, 0, 0, -1, 3, 0]
    idx, valid, positive = sample(gt_inds, num=4, pos_fraction=0.5)
    # num 4 × 0.5 = 2 positives expected and available; the other 2 slots are negatives.
    assert valid.tolist() == [True] * 4 and positive.tolist() == [True, True, False, False]
    assert set(idx[:2]) <= {0, 1, 6} and set(idx[2:]) <= {2, 3, 4, 7} and len(set(idx)) == 4


def test_negatives_fill_missing_positives_and_neg_pos_ub():
    gt_inds = [1, 0, 0, 0, 0, 0]
    # Only 1 positive for 2 positive slots: negatives fill the remaining 4 - 1 = 3 slots.
    _, valid, positive = sample(gt_inds, num=4, pos_fraction=0.5)
    assert valid.sum() == 4 and positive.sum() == 1
    # neg_pos_ub 1.5: at most int(1.5 × 1) = 1 negative; the sample is short (2 of 4 slots).
    _, valid, positive = sample(gt_inds, num=4, pos_fraction=0.5, neg_pos_ub=1.5)
    assert valid.tolist() == [True, True, False, False] and positive.tolist() == [True, False, False, False]
    # No positive at all: the bound uses max(1, 0) = 1 positive, so int(2 × 1) = 2 negatives.
    _, valid, positive = sample([0, 0, 0, 0, 0, 0], num=4, pos_fraction=0.5, neg_pos_ub=2)
    assert valid.sum() == 2 and positive.sum() == 0


def test_fewer_boxes_than_slots_is_padded():
    idx, valid, positive = sample([1, 0, -1], num=8, pos_fraction=0.25)
    assert idx.shape == (8,) and valid.tolist() == [True, True] + [False] * 6
    # Box 0 is the positive, box 1 the negative; box 2 is ignored and never drawn.
    assert idx.tolist() == [0, 1] + [0] * 6 and positive[0] and not positive[1]


def test_deterministic_given_a_seed():
    gt_inds = tf.constant([[1] * 50 + [0] * 50], tf.int32)
    a = random_sample(gt_inds, 16, 0.5, seed=(3, 4))[0]
    b = random_sample(gt_inds, 16, 0.5, seed=(3, 4))[0]
    c = random_sample(gt_inds, 16, 0.5, seed=(3, 5))[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    fn = tf.function(lambda g, s: random_sample(g, 16, 0.5, seed=s)[0])
    np.testing.assert_array_equal(fn(gt_inds, tf.constant([3, 4])), a)


def test_uniform_choice():
    # 2000 images with the same 10 negatives and 5 slots: each negative is drawn with probability 1/2.
    gt_inds = tf.zeros([2000, 10], tf.int32)
    idx, valid, _ = random_sample(gt_inds, 5, 0.25, seed=(7, 7))
    counts = np.bincount(idx.numpy()[valid.numpy()], minlength=10) / 2000
    np.testing.assert_allclose(counts, 0.5, atol=0.05)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40), num=st.integers(1, 32),
       pos_fraction=st.sampled_from([0.25, 0.5, 1.0]), neg_pos_ub=st.sampled_from([-1, 0, 1.5, 3]))
def test_counts_and_fractions_hold(seed, n, num, pos_fraction, neg_pos_ub):
    rng = np.random.default_rng(seed)
    gt_inds = rng.integers(-1, 4, (2, n)).astype(np.int32)
    idx, valid, positive = [t.numpy() for t in random_sample(gt_inds, num, pos_fraction, (seed, 0), neg_pos_ub)]
    for b in range(2):
        n_pos, n_neg = (gt_inds[b] > 0).sum(), (gt_inds[b] == 0).sum()
        want_pos = min(n_pos, int(num * pos_fraction))
        want_neg = min(n_neg, num - want_pos)
        if neg_pos_ub >= 0:
            want_neg = min(want_neg, int(neg_pos_ub * max(1, want_pos)))
        assert positive[b].sum() == want_pos and valid[b].sum() == want_pos + want_neg
        chosen = idx[b][valid[b]]
        assert len(set(chosen)) == len(chosen)  # without replacement
        assert (gt_inds[b][idx[b][positive[b]]] > 0).all()
        assert (gt_inds[b][idx[b][valid[b] & ~positive[b]]] == 0).all()
        # Layout: positives, then negatives, then padding.
        assert valid[b].tolist() == sorted(valid[b].tolist(), reverse=True)
        assert positive[b].tolist() == sorted(positive[b].tolist(), reverse=True)


def test_add_gt_as_proposals():
    proposals = tf.constant([[[0, 0, 5, 5], [1, 1, 6, 6]]], tf.float32)
    gts = tf.constant([[[10, 10, 20, 20], [0, 0, 0, 0]]], tf.float32)
    gt_valid = tf.constant([[True, False]])
    boxes, valid = add_gt_as_proposals(proposals, tf.constant([[True, True]]), gts, gt_valid)
    assert boxes.shape == (1, 4, 4) and valid[0].numpy().tolist() == [True, False, True, True]
    # Whatever the assigner said about the gt slots, each real gt becomes a positive of itself; padding is ignored.
    gt_inds, matched = assign_gt_proposals_to_themselves(tf.constant([[0, 0, 1, 0]]), tf.constant([[1, 1, 0, 0]]),
                                                         gt_valid)
    assert gt_inds[0].numpy().tolist() == [1, -1, 1, 0] and matched[0].numpy().tolist()[:2] == [0, 1]


def test_an_images_sample_depends_only_on_its_seed():
    # The same image sampled alone or as the second of a batch, with the same per-image seed, gets the same sample:
    # what makes a replica's sample equal the single-device one.
    rng = np.random.default_rng(0)
    gt_inds = tf.constant(rng.integers(-1, 3, (3, 200)), tf.int32)
    seeds = tf.constant([[5, 0], [5, 1], [5, 2]])
    batched = random_sample(gt_inds, 32, 0.25, seeds)[0]
    alone = random_sample(gt_inds[1:2], 32, 0.25, seeds[1:2])[0]
    np.testing.assert_array_equal(batched[1:2], alone)
    # A [2] seed means per-image seeds (s0, s1 + b).
    np.testing.assert_array_equal(random_sample(gt_inds, 32, 0.25, (5, 0))[0], batched)


def test_noise_is_uniform_and_decorrelated():
    from tfrcnn.ops.sample import per_image_uniform
    noise = per_image_uniform(tf.constant([[1, 2], [1, 3], [2, 2]]), 20000).numpy()
    assert noise.min() >= 0 and noise.max() < 1
    np.testing.assert_allclose(noise.mean(axis=1), 0.5, atol=0.01)
    np.testing.assert_allclose(np.histogram(noise[0], bins=10, range=(0, 1))[0] / 20000, 0.1, atol=0.01)
    assert abs(np.corrcoef(noise[0], noise[1])[0, 1]) < 0.03 and abs(np.corrcoef(noise[0], noise[2])[0, 1]) < 0.03
    assert abs(np.corrcoef(noise[0, :-1], noise[0, 1:])[0, 1]) < 0.03

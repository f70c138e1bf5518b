"""The metrics against hand-computed cases (every empty-mask rule) and against independent,
loop-by-loop ports of the official AVSBench evaluation code."""

from __future__ import annotations

import numpy as np
import pytest

from avs_agent.evals import metrics as M

# ----------------------------------------------------------------------------- independent ports


def port_mask_iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Frame-by-frame port of AVSBench ``mask_iou`` (float32, as torch computes it), with the
    prediction already passed through the sigmoid."""
    n = pred.shape[0]
    total = np.float32(0.0)
    for i in range(n):
        p = (pred[i] > 0.5).astype(np.float32)
        t = (target[i] > 0).astype(np.float32)
        if t.sum() == 0:
            inter = ((1 - t) * (1 - p)).sum()
            union = np.float32(p.shape[0] * p.shape[1])
        else:
            inter = (p * t).sum()
            union = np.maximum(p, t).sum()
        total += np.float32(inter) / np.float32(union + 1e-7)
    return float(total / n)


def port_fmeasure(pred: np.ndarray, gt: np.ndarray, num: int = 255) -> float:
    """Port of ``_eval_pr`` + ``Eval_Fmeasure``: one threshold at a time, float32."""
    thlist = np.linspace(0, 1 - 1e-10, num)  # float64 here: independent of M.f_thresholds
    score = np.zeros(num, np.float32)
    avg_f = np.zeros(num, np.float32)
    img_num = 0
    for k in range(pred.shape[0]):
        y = (gt[k] > 0).astype(np.float32)
        if y.mean() == 0.0:
            continue
        prec = np.zeros(num, np.float32)
        rec = np.zeros(num, np.float32)
        for i in range(num):
            y_temp = (pred[k].astype(np.float64) >= thlist[i]).astype(np.float32)
            tp = (y_temp * y).sum()
            prec[i] = tp / (y_temp.sum() + np.float32(1e-20))
            rec[i] = tp / (y.sum() + np.float32(1e-20))
        with np.errstate(invalid="ignore", divide="ignore"):
            f = (1 + 0.3) * prec * rec / (0.3 * prec + rec)
        f[f != f] = 0
        avg_f = avg_f + f
        img_num += 1
        score = avg_f / img_num
    return float(score.max())


def random_video(rng: np.random.Generator, t: int = 5, h: int = 12, w: int = 16, prob: bool = False):
    gt = np.zeros((t, h, w), np.uint8)
    pred = np.zeros((t, h, w), np.float32)
    for i in range(t):
        kind = rng.integers(0, 4)
        if kind > 0:  # a blob, or nothing (empty ground truth)
            y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
            gt[i, y0 : y0 + rng.integers(1, h - y0), x0 : x0 + rng.integers(1, w - x0)] = 255
        if prob:
            # quantised so no value falls within float rounding of a threshold
            pred[i] = np.round(rng.random((h, w)) * 1000) / 1000
        elif rng.random() < 0.75:
            pred[i] = rng.random((h, w)) < rng.uniform(0.05, 0.6)
    return pred, gt


# ----------------------------------------------------------------------------- J, hand-computed


def test_j_perfect_and_half():
    gt = np.array([[[1, 1], [0, 0]]])
    assert M.video_j(gt.astype(bool), gt) == pytest.approx(1.0, abs=1e-6)
    pred = np.array([[[1, 0], [0, 0]]], bool)
    assert M.video_j(pred, gt) == pytest.approx(0.5, abs=1e-6)


def test_j_empty_ground_truth_scores_shared_background():
    gt = np.zeros((1, 2, 2))
    assert M.video_j(np.zeros((1, 2, 2), bool), gt) == pytest.approx(1.0, abs=1e-6)
    one = np.array([[[1, 0], [0, 0]]], bool)
    assert M.video_j(one, gt) == pytest.approx(0.75, abs=1e-6)
    full = np.ones((1, 2, 2), bool)
    assert M.video_j(full, gt) == 0.0


def test_j_empty_prediction_on_visible_source_is_zero():
    gt = np.array([[[1, 0], [0, 0]]])
    assert M.video_j(np.zeros((1, 2, 2)), gt) == 0.0


def test_j_is_mean_over_frames_and_uses_half_threshold():
    gt = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    pred = np.array([[[0.9, 0.5], [0.1, 0.0]], [[0.51, 0.0], [0.0, 0.0]]])
    # frame 1: 0.5 is not > 0.5 -> IoU 1/2; frame 2: empty truth, 3 of 4 pixels agree -> 3/4
    assert M.frame_ious(pred, gt) == pytest.approx([0.5, 0.75], abs=1e-6)
    assert M.video_j(pred, gt) == pytest.approx(0.625, abs=1e-6)


def test_j_rejects_bad_input():
    with pytest.raises(ValueError):
        M.video_j(np.zeros((1, 2, 2)), np.zeros((1, 2, 3)))
    with pytest.raises(ValueError):
        M.video_j(np.full((1, 2, 2), 1.5), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError):
        M.video_j(np.zeros((0, 2, 2)), np.zeros((0, 2, 2)))


def test_png_masks_0_255_accepted():
    gt = np.array([[[255, 0], [0, 0]]], np.uint8)
    assert M.video_j(gt, gt) == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------- F, hand-computed

F_ALL = 1.3 * 0.5 / (0.3 * 0.5 + 1)  # threshold 0 on a frame half covered: P = 0.5, R = 1


def test_f_binary_prediction_includes_threshold_zero():
    gt = np.array([[[1, 1], [0, 0]]])
    pred = np.array([[[1, 0], [0, 0]]], bool)  # P = 1, R = 0.5 above threshold 0
    curve = M.frame_f_curves(pred, gt)[0]
    assert curve[0] == pytest.approx(F_ALL)
    assert curve[1:] == pytest.approx(np.full(254, 1.3 * 0.5 / (0.3 + 0.5)))
    assert M.video_f(pred, gt) == pytest.approx(0.8125)


def test_f_empty_prediction_on_visible_source_scores_threshold_zero_only():
    gt = np.array([[[1, 1], [0, 0]]])
    assert M.video_f(np.zeros((1, 2, 2)), gt) == pytest.approx(F_ALL)


def test_f_skips_frames_with_empty_ground_truth():
    gt = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    pred = np.array([[[1, 0], [0, 0]], [[1, 1], [1, 1]]], bool)
    assert M.video_f(pred, gt) == pytest.approx(0.8125)


def test_f_video_with_only_empty_frames_scores_zero():
    gt = np.zeros((3, 2, 2))
    assert M.video_f(np.zeros((3, 2, 2)), gt) == 0.0
    assert M.video_f(np.ones((3, 2, 2)), gt) == 0.0


def test_f_curve_averaged_before_max():
    gt = np.array([[[1, 0]], [[1, 0]]])
    pred = np.array([[[0.9, 0.5]], [[0.2, 0.0]]])
    # frame A peaks (1.0) for thresholds in (0.5, 0.9], frame B for (0, 0.2]: mean curve peaks at
    # (F_ALL + 1) / 2, not at the mean of the maxima (1.0)
    assert M.video_f(pred, gt) == pytest.approx((F_ALL + 1) / 2)


def test_f_thresholds_match_torch_linspace():
    torch = pytest.importorskip("torch")
    expected = torch.linspace(0, 1 - 1e-10, 255).numpy()
    assert np.array_equal(M.f_thresholds(), expected)
    assert M.f_thresholds()[-1] == 1.0


def test_dataset_mean_empty():
    assert M.dataset_mean([]) == 0.0
    assert M.dataset_mean([0.5, 1.0]) == 0.75


# ----------------------------------------------------------------------------- against the ports


@pytest.mark.parametrize("prob", [False, True])
def test_agrees_with_official_port_on_random_videos(prob):
    rng = np.random.default_rng(7 + prob)
    n_empty_frames = 0
    for _ in range(40):
        pred, gt = random_video(rng, prob=prob)
        n_empty_frames += int((gt.reshape(5, -1).sum(1) == 0).sum())
        assert M.video_j(pred, gt) == pytest.approx(port_mask_iou(pred, gt), abs=1e-6)
        assert M.video_f(pred, gt) == pytest.approx(port_fmeasure(pred, gt), abs=1e-6)
    assert n_empty_frames > 10  # the rule for empty truth was exercised


def test_agrees_with_torch_port():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for _ in range(10):
        pred, gt = random_video(rng, prob=True)
        p = torch.from_numpy(pred)
        t = torch.from_numpy((gt > 0).astype(np.float32))
        fg = (p > 0.5).int()
        inter = (fg * t).sum(2).sum(1)
        union = torch.max(fg, t).sum(2).sum(1)
        empty = t.sum(2).sum(1) == 0
        inter[empty] = ((1 - t) * (1 - fg)).sum(2).sum(1)[empty]
        union[empty] = pred.shape[1] * pred.shape[2]
        j = float(torch.sum(inter / (union + 1e-7)) / pred.shape[0])
        assert M.video_j(pred, gt) == pytest.approx(j, abs=1e-6)


def test_score_video_flags():
    gt = np.zeros((2, 3, 3))
    s = M.score_video(np.zeros((2, 3, 3)), gt)
    assert s.gt_empty and s.pred_empty and s.f == 0.0 and s.j == pytest.approx(1.0)
    assert s.topk_ious == []


# ----------------------------------------------------------------------------- zero-shot metrics


def test_topk_iou_uses_ground_truth_size():
    gt = np.array([[[1, 0], [0, 1]]])
    pred = np.array([[[0.9, 0.1], [0.8, 0.2]]])
    assert M.topk_ious(pred, gt) == pytest.approx([1 / 3])
    # frames with empty truth are left out
    assert len(M.topk_ious(np.ones((2, 2, 2)) * 0.5, np.zeros((2, 2, 2)))) == 0


def test_topk_does_not_pad_binary_masks_with_background():
    m = M.topk_mask(np.array([[1, 0], [0, 0]], bool), 3)
    assert m.sum() == 1


def test_ciou_and_auc():
    assert M.ciou([0.2, 0.5, 0.7]) == pytest.approx(2 / 3)
    assert M.ciou([]) == 0.0
    assert M.auc([1.0]) == pytest.approx(1.0)
    assert M.auc([0.0]) == pytest.approx(0.025)
    assert M.auc([0.5]) == pytest.approx(0.525)
    assert M.auc([]) == 0.0


# ----------------------------------------------------------------------------- AVSS


def test_avss_palette_matches_voc():
    pal = M.avss_palette()
    assert pal.shape == (71, 3)
    assert (
        pal[0].tolist() == [0, 0, 0]
        and pal[1].tolist() == [128, 0, 0]
        and pal[15].tolist() == [192, 128, 128]
    )
    labels = np.array([[0, 1], [70, 15]])
    assert np.array_equal(M.rgb_to_labels(M.labels_to_rgb(labels)), labels)
    odd = np.array([[[1, 2, 3]]], np.uint8)
    assert M.rgb_to_labels(odd).tolist() == [[0]]


def test_avss_classwise_hand_computed():
    acc = M.ClasswiseAccumulator(n_classes=4)
    gt = np.array([[[0, 1], [1, 2]]])
    pred = np.array([[[0, 1], [2, 2]]])
    acc.add(pred, gt)
    r = acc.result()
    f1 = 1.3 * 0.5 / (0.3 + 0.5)
    f2 = 1.3 * 0.5 / (0.15 + 1)
    assert r["per_class_miou"] == pytest.approx([1.0, 0.5, 0.5, 0.0])
    assert r["per_class_f"] == pytest.approx([1.0, f1, f2, 0.0])
    assert r["miou"] == pytest.approx(2.0 / 4)  # the absent class counts 0 in the headline
    assert r["miou_present"] == pytest.approx(2.0 / 3)
    assert r["f"] == pytest.approx((1 + f1 + f2) / 4)
    # a padded all-background frame adds to background only
    acc.add(np.zeros((0, 2, 2), int), np.zeros((0, 2, 2), int), pad_frames=1)
    assert acc.count.tolist() == [2, 1, 1, 0]
    assert acc.result()["per_class_miou"][0] == pytest.approx(1.0)


def test_avss_empty_accumulator():
    r = M.ClasswiseAccumulator().result()
    assert r["miou"] == 0.0 and r["f"] == 0.0 and r["classes_present"] == 0

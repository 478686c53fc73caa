#!/usr/bin/env python
"""Plants bugs (mutants) into the numerical core, one at a time, and checks that the tests catch each.

Each mutant is ``(name, file, original, replacement, tests)``: ``original`` is an exact snippet
that must occur exactly once in the package (the file is where it lives today; if the code moved
to another module of the package the snippet is still found there, and the table names the file
it was found in; if it occurs nowhere, or more than once, the script stops with an error: update
the snippet). For each mutant the script replaces the snippet, runs ``tests`` (a short list of
pytest node ids, seconds each), and puts the original text back in a ``finally`` (also on
Ctrl-C). A mutant is *caught* when the tests fail, *survived* when they pass. First, every listed
test runs once on the unmutated code and must pass (else every mutant would look caught).

    python scripts/mutants.py             # every mutant; exit status 1 if any survives
    python scripts/mutants.py --list      # one line per mutant, runs nothing
    python scripts/mutants.py --only NAME [--only NAME2]
    python scripts/mutants.py --subprocess  # one fresh interpreter per mutant (slower, no fork)
    python scripts/mutants.py --no-baseline # skip the first run of all the listed tests on the clean code

Speed: TensorFlow, Keras, scikit-learn and pytest are imported once; each mutant's tests run in
a forked child that imports the (mutated) package afresh. Bytecode is not written while a mutant
is planted, and the cached bytecode of the mutated module is removed after the restore, so a
mutant can never survive in a ``.pyc``.

See CONTRIBUTING.md, "Mutants".
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "keras_hybrid_interp")

T = "tests/"
IMP = T + "global_/test_importance.py::"
ORC = T + "core/test_metric_oracles.py::"
CON = T + "local/test_concepts.py::"


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to keras_hybrid_interp/ (where the snippet lives today)
    original: str
    replacement: str
    tests: tuple
    why: str = ""


M = Mutant
MUTANTS = [
    # ---------------- importance ----------------
    M("importance_sign", "global_/importance.py", "imp = baseline - scores", "imp = scores - baseline",
      (IMP + "test_importance_equals_full_rerun_scores",), "flipped sign"),
    M("group_perturbs_next_filter", "global_/importance.py",
      "chan_sets = [np.array([i]) for i in range(c)] if groups_t is None else list(groups_t)",
      "chan_sets = [np.array([i]) for i in range(c)] if groups_t is None else [(g + 1) % c for g in groups_t]",
      (IMP + "test_groups_and_to_frame",), "each group perturbs the next filter"),
    M("importances_std_ddof", "global_/importance.py", "return self.importances.std(axis=1)",
      "return self.importances.std(axis=1, ddof=1)", (IMP + "test_importances_std_uses_ddof_0_over_repeats",),
      "the other ddof"),
    M("mean_ablation_fill", "global_/importance.py",
      "return np.mean(a[..., ch], axis=0, dtype=np.float64).astype(a.dtype)",
      "return np.mean(a[..., ch], axis=(0, 1), dtype=np.float64).astype(a.dtype)",
      (IMP + "test_mean_ablation_uses_dataset_mean_map",), "mean over samples and rows"),
    M("zero_ablation_fill", "global_/importance.py",
      'return np.zeros((), dtype=np.float32 if a is None else a.dtype)',
      'return np.ones((), dtype=np.float32 if a is None else a.dtype)',
      (IMP + "test_importance_equals_full_rerun_scores",), "ablation fills ones"),
    M("t_interval_dof", "global_/importance.py", "student_t.ppf(0.975, r - 1)", "student_t.ppf(0.975, r)",
      (IMP + "test_groups_and_to_frame",), "t quantile with R degrees of freedom"),
    M("t_interval_sd_ddof", "global_/importance.py", "imp.std(axis=1, ddof=1) / np.sqrt(r)",
      "imp.std(axis=1, ddof=0) / np.sqrt(r)", (IMP + "test_groups_and_to_frame",), "interval sd with ddof=0"),
    M("taylor_abs_per_sample", "global_/importance.py", "return self.sum_abs / n", "return np.abs(self.sum_z) / n",
      (IMP + "test_taylor_matches_hand_gradient_of_gap_dense_head",), "default Taylor = abs of the mean"),
    M("taylor_molchanov", "global_/importance.py", "return self.sum_z2 / n", "return self.sum_z2 / (n - 1)",
      (IMP + "test_taylor_matches_hand_gradient_of_gap_dense_head",), "Molchanov divided by n - 1"),
    # ---------------- the engine and its stacking ----------------
    M("permutation_spawn_key", "core/perturbation.py", "spawn_key=(int(group), int(repeat))",
      "spawn_key=(int(repeat), int(group))", (IMP + "test_groups_and_to_frame",),
      "(group, repeat) swapped: not the documented permutation"),
    M("stacked_slot_outputs", "core/perturbation.py", "outs[slot].append(out[slot, :e - s])",
      "outs[slot].append(out[0, :e - s])", (IMP + "test_tail_equals_full_rerun_inside_residual_block[3-None]",),
      "every stacked job scored on slot 0"),
    M("single_chunk_undo", "core/perturbation.py", "buf_key[slot, :m][..., ch] = base[..., ch]",
      "buf_key[slot, :m][..., ch] = 0", (IMP + "test_tail_equals_full_rerun_inside_residual_block[3-None]",),
      "the previous group's perturbation is not undone"),
    M("in_place_undo", "core/perturbation.py", "key_arr[s:e, ..., ch] = orig", "key_arr[s:e, ..., ch] = 0 * orig",
      (T + "core/test_engine_stacking.py::"
       "test_chunked_passes_in_place_equal_the_buffered_passes_and_leave_the_cache_unchanged",),
      "in-place chunks leave the cache perturbed"),
    M("in_place_permutation", "core/perturbation.py",
      "rows[..., ch] = replacement(job, perm, key_arr, s, e, self.grid)",
      "rows[..., ch] = replacement(job, None if perm is None else perm[::-1], key_arr, s, e, self.grid)",
      (T + "core/test_engine_stacking.py::"
       "test_chunked_passes_in_place_equal_the_buffered_passes_and_leave_the_cache_unchanged",),
      "in-place chunks permute with the wrong order"),
    M("fill_permutation_rows", "core/perturbation.py",
      "return source[np.ix_(perm[s:e], *grid, job.channels)]",
      "return source[np.ix_(perm[s:e][::-1], *grid, job.channels)]",
      (IMP + "test_importance_equals_full_rerun_scores",),
      "every fill writes the rows of the reversed permutation"),
    M("tied_mask_first_tensor_only", "core/perturbation.py",
      "bm[slot, :m][..., ch] = True",
      "bm[slot, :m][..., ch] = k == self.member_keys[0]",
      (T + "global_/test_coupled.py::test_coupled_permutation_equals_joint_permutation_by_hand",),
      "a coupled job perturbs only the first tied tensor"),
    M("calibration_picks_slowest", "core/plan.py", "best = min(seconds, key=lambda c: seconds[c])",
      "best = max(seconds, key=lambda c: seconds[c])",
      (T + "core/test_engine_stacking.py::test_auto_picks_the_fastest_plan_and_reuses_it_for_baseline_and_run",),
      "stacking calibration takes the slowest plan"),
    M("pooled_mean_fill", "core/engine.py",
      "return np.mean(pooled, axis=0, dtype=np.float64).astype(cache.arrays[0].dtype)",
      "return np.median(pooled, axis=0).astype(cache.arrays[0].dtype)",
      (T + "global_/test_pooled_head.py::test_shortcut_equals_the_tail_engine",),
      "pooled mean ablation fills the median"),
    M("linear_head_delta", "core/linear_head.py",
      "delta = new - old\n            wgt = np.swapaxes(w[ch], 1, 2)",
      "delta = old - new\n            wgt = np.swapaxes(w[ch], 1, 2)",
      (T + "core/test_linear_head.py::test_outputs_equal_a_numpy_reference_and_the_head",),
      "closed-form head moves logits the wrong way"),
    M("linear_head_softmax_shift", "core/linear_head.py", "np.maximum(m, z[..., i, :], out=m)",
      "np.minimum(m, z[..., i, :], out=m)", (T + "core/test_linear_head.py::test_softmax_of_large_logits_is_stable",),
      "softmax shifted by the minimum logit (overflow)"),
    M("argmax_limits_round_to_nearest", "core/linear_head.py", "y[away] = np.nextafter(y[away], np.zeros((), dtype))",
      "y[away] = y[away]",
      (T + "core/test_pointwise_head.py::test_limits_round_toward_zero",),
      "the candidate test's float32 limits rounded to nearest (up to 2^-24 above the bound)"),
    M("channel_extreme_skips_a_row", "core/data_pass.py", "parts.append(ufunc.reduce(flat[head:], axis=0))",
      "parts.append(ufunc.reduce(flat[head + 1:], axis=0))",
      (T + "core/test_numerics.py::test_channel_extremes_equal_numpy_min_and_max",),
      "the rows left over after the long rows lose their first row (a dead-filter check misses a value)"),
    M("multilabel_ap_many_transposed", "core/task.py",
      "aps = average_precisions(y.reshape(n, j * k), p.reshape(n, j * k)).reshape(j, k)",
      "aps = average_precisions(y.reshape(n, j * k), p.reshape(n, j * k)).reshape(k, j).T",
      (T + "core/test_metric_oracles.py::test_macro_average_precision_of_many_outputs_equals_each_alone_and_sklearn",),
      "a chunk of jobs' average precisions read job-major from label-major columns"),
    M("predicted_logit_margin_small", "core/linear_head.py",
      "unsure = np.flatnonzero(~((first - second) - 1e-6 * (1.0 + np.abs(first)) > 0))",
      "unsure = np.flatnonzero(~((first - second) - 1e-12 * (1.0 + np.abs(first)) > 0))",
      (T + "core/test_pointwise_head.py::test_predicted_classes_equal_the_argmax_of_the_rounded_softmax",),
      "classes read off the logits where the rounded softmax ties (margin below float32 rounding)"),
    M("argmax_bound_down_half", "core/linear_head.py", "up, down = w_c.max() - w_c, w_c - w_c.min()",
      "up, down = w_c.max() - w_c, 0.5 * (w_c - w_c.min())",
      (T + "core/test_pointwise_head.py::test_mean_iou_recomputes_only_where_the_argmax_can_move",),
      "mean IoU shortcut misses positions whose top class falls (bound too small for delta < 0)"),
    M("argmax_bound_half", "core/linear_head.py", "up, down = w_c.max() - w_c, w_c - w_c.min()",
      "up, down = 0.5 * (w_c.max() - w_c), w_c - w_c.min()",
      (T + "core/test_pointwise_head.py::test_mean_iou_recomputes_only_where_the_argmax_can_move",),
      "mean IoU shortcut misses positions whose argmax moves (bound too small)"),
    M("top_two_argmax_ties_up", "core/linear_head.py", "pred[v > first] = k", "pred[v >= first] = k",
      (T + "core/test_pointwise_head.py::test_top_two_logits_equal_numpy_sort",),
      "the logits' class of a tie goes to the higher class"),
    M("argmax_candidate_logits_position_major", "core/linear_head.py",
      "at = cand + (cand // hw) * ((k_out - 1) * hw)", "at = cand",
      (T + "core/test_pointwise_head.py::test_mean_iou_recomputes_only_where_the_argmax_can_move",),
      "the candidates' baseline logits read from the wrong sample's rows"),
    M("argmax_old_cells_kept", "core/linear_head.py", "cm -= np.bincount(t + np.take(pred, cand)",
      "cm += 0 * np.bincount(t + np.take(pred, cand)",
      (T + "core/test_pointwise_head.py::test_mean_iou_recomputes_only_where_the_argmax_can_move",),
      "mean IoU shortcut adds the candidates' new cells without removing their old ones"),
    # ---------------- trainer and probes ----------------
    M("probe_penalty_scale", "core/trainer.py", "penalty = 0.0 if math.isinf(C) else 1.0 / (C * n)",
      "penalty = 0.0 if math.isinf(C) else 1.0 / C",
      (T + "core/test_trainer_sklearn.py",),
      "penalty not divided by n (not scikit-learn's objective)"),
    M("probe_bias_gradient", "core/trainer.py", "gb = resid.sum(axis=0)", "gb = resid.mean(axis=0)",
      (T + "local/test_probes.py::test_objective_gradient_matches_finite_differences",),
      "bias gradient divided by n twice"),
    M("ridge_loo_leverage", "core/trainer.py", "loo = (yc - fitted) / (1.0 - h)[:, None]", "loo = (yc - fitted)",
      (T + "core/test_trainer_tasks.py",), "ridge picks alpha by training error"),
    M("ridge_intercept", "core/trainer.py", "b = ym - zm @ w", "b = ym",
      (T + "core/test_trainer_tasks.py",), "ridge intercept ignores the feature means"),
    M("multilabel_probe_bias", "core/trainer.py", "kernel[:, j], bias[j] = sol.kernel[:, 1], sol.bias[1]",
      "kernel[:, j], bias[j] = sol.kernel[:, 1], sol.bias[0]",
      (T + "core/test_trainer_tasks.py::"
       "test_multilabel_probe_is_one_logistic_regression_per_label_with_soft_targets_too",),
      "multi-label probe drops its bias"),
    M("multilabel_soft_targets", "core/trainer.py", "np.stack([1.0 - t, t], axis=1)", "np.stack([t, 1.0 - t], axis=1)",
      (T + "core/test_trainer_tasks.py::"
       "test_multilabel_probe_is_one_logistic_regression_per_label_with_soft_targets_too",),
      "soft multi-label targets swapped"),
    M("probe_logits_scale", "core/trainer.py",
      "return ((np.asarray(features, np.float64) - mean) * scale) @ kernel + bias",
      "return (np.asarray(features, np.float64) - mean) @ kernel + bias",
      (T + "local/test_interpreter.py::test_evaluate_layers_equals_sklearn_on_independent_features",),
      "probe logits lose the standardization"),
    M("span_stop_untightened", "core/trainer.py", "gtol = tol / max(1.0, rho * math.sqrt(m))", "gtol = tol",
      (T + "core/test_trainer_span.py::"
       "test_span_run_stops_where_the_full_space_run_stops_with_a_feature_axis_in_the_span",),
      "the span's fit stops on its own coordinates' gradient, before the full gradient passes the test"),
    M("span_keeps_penalised_start", "core/trainer.py", "rest = w0 - v @ a0 if math.isinf(C) else 0.0",
      "rest = w0 - v @ a0",
      (T + "core/test_trainer_span.py::"
       "test_span_warm_start_reaches_the_optimum_and_a_converged_start_stops_at_once",),
      "a warm start's part off the samples' span is kept although the penalty's optimum is 0 there"),
    M("span_features_untransposed", "core/trainer.py", "    return v, r.T\n", "    return v, r\n",
      (T + "core/test_trainer_span.py::test_span_fit_equals_sklearn",),
      "the samples' coordinates in the span are R instead of R.T"),
    M("newton_padding_counted", "core/trainer.py", "    count = s.sum(axis=1)  # N per problem\n",
      "    count = np.full(b_count, float(n))\n",
      (T + "core/test_trainer_batch.py::test_each_problem_of_a_batch_equals_sklearn_alone",),
      "the batch's padding samples counted in each problem's N (its penalty and mean loss)"),
    M("newton_back_transform", "core/trainer.py", "np.einsum(\"bnk,bk->bn\", evecs, inv * a)",
      "np.einsum(\"bnk,bk->bn\", evecs, root * a)",
      (T + "core/test_trainer_batch.py::test_each_problem_of_a_batch_equals_sklearn_alone",),
      "the span's coefficients mapped back to the features with S^1/2 instead of S^-1/2"),
    M("newton_converged_untested", "core/trainer.py", "converged = bool(np.max(np.abs(grad[j])) <= tol)",
      "converged = True",
      (T + "core/test_trainer_batch.py::test_an_iteration_cap_leaves_the_fit_unconverged",),
      "a batched fit stopped by its iteration cap reported as converged"),
    M("newton_bias_hessian", "core/trainer.py", "h[:, n, n] = wgt.sum(axis=1) + 1e-12", "h[:, n, n] = 1e-12",
      (T + "core/test_trainer_batch.py::test_each_problem_of_a_batch_equals_sklearn_alone",),
      "the bias's curvature left out of the Newton step"),
    M("input_transform_variance", "local/probes.py", "var /= max(n, 1)", "var /= max(n - 1, 1)",
      (T + "local/test_probes.py::test_input_transform_is_standard_scaler_and_drops_constant_features",),
      "standardization with ddof=1 (StandardScaler uses 0)"),
    M("effective_bias", "local/probes.py", "return w, bias - mean @ w", "return w, bias + mean @ w",
      (T + "local/test_probes.py::test_state_round_trip_and_effective_weights_reproduce_the_layer",),
      "effective bias with the wrong sign"),
    # ---------------- correlation, association, CKA ----------------
    M("correlation_merge_term", "global_/correlation.py",
      "self.comoment += cb + np.outer(delta, delta) * (n * nb / tot)", "self.comoment += cb",
      (T + "global_/test_correlation.py::test_streaming_equals_corrcoef",),
      "batch merge drops the between-batch term"),
    M("correlation_mean_update", "global_/correlation.py",
      "self.comoment += cb + np.outer(delta, delta) * (n * nb / tot)\n        self.mean += delta * (nb / tot)",
      "self.comoment += cb + np.outer(delta, delta) * (n * nb / tot)\n        self.mean += delta * (n / tot)",
      (T + "global_/test_correlation.py::test_streaming_equals_corrcoef",),
      "running mean weighted by the wrong count"),
    M("association_prior_factor", "global_/association.py", "np.sqrt(p / (1 - p))[:, None]",
      "np.sqrt(p)[:, None]", (T + "global_/test_association.py::test_equals_point_biserial_reference",),
      "point-biserial without its prior factor"),
    M("association_sd_ddof", "global_/association.py", "sd = np.sqrt(self.m2 / self.n)",
      "sd = np.sqrt(self.m2 / (self.n - 1))",
      (T + "global_/test_association.py::test_equals_point_biserial_reference",), "sd with ddof=1"),
    M("target_moments_covariance", "global_/association.py",
      "cov = self.cross / n - np.outer(self.ss / n, self.st / n)", "cov = self.cross / n",
      (T + "global_/test_tasks_global.py::test_association_is_the_pearson_correlation_with_labels_and_targets",),
      "Pearson r of targets from uncentred cross products"),
    M("target_moments_positive_means", "global_/association.py", "self.pos_sums += s.T @ t",
      "self.pos_sums += s.T @ (1 - t)",
      (T + "global_/test_tasks_global.py::test_association_is_the_pearson_correlation_with_labels_and_targets",),
      "multi-label class means over the negatives"),
    M("linear_cka_numerator", "global_/similarity.py", "return float(np.sum(sxy * sxy) / den)",
      "return float(np.sum(np.abs(sxy)) / den)",
      (T + "global_/test_similarity.py::test_linear_cka_reference_formula_and_invariances",),
      "CKA numerator not the squared Frobenius norm"),
    M("unbiased_hsic_term", "global_/similarity.py", "- (2.0 / (n - 2)) * (rows @ rows.T)",
      "- (2.0 / (n - 1)) * (rows @ rows.T)",
      (T + "global_/test_cka_two_models.py::test_one_minibatch_of_all_the_data_is_the_unbiased_cka",),
      "unbiased HSIC with a wrong correction"),
    M("full_cka_normalization", "global_/similarity.py", "out[a, b] = np.sum(blk * blk) / den",
      "out[a, b] = np.sum(blk * blk) / np.sqrt(den)",
      (T + "global_/test_similarity.py::test_streaming_equals_reference",), "full CKA wrongly normalized"),
    # ---------------- atlas ----------------
    M("atlas_order", "global_/atlas.py", 'order = np.argsort(-cand_vals, axis=0, kind="stable")[: self.k]',
      'order = np.argsort(cand_vals, axis=0, kind="stable")[: self.k]',
      (T + "global_/test_atlas.py::test_top_k_equals_brute_force_argsort_across_batches",),
      "atlas keeps the weakest samples"),
    M("atlas_ties", "global_/atlas.py", 'order = np.argsort(-cand_vals, axis=0, kind="stable")[: self.k]',
      'order = np.argsort(-cand_vals[::-1], axis=0, kind="stable")[: self.k]',
      (T + "global_/test_atlas.py::test_ties_go_to_the_earlier_sample",), "ties go to the later sample"),
    M("atlas_location", "global_/atlas.py", "pos[s:e] = np.argmax(flat, axis=1)", "pos[s:e] = np.argmin(flat, axis=1)",
      (T + "global_/test_atlas.py::test_top_k_equals_brute_force_argsort_across_batches",),
      "location of the minimum, not the maximum"),
    # ---------------- bootstrap ----------------
    M("bootstrap_poisson_rate", "core/bootstrap.py", "self.rng.poisson(1.0,", "self.rng.poisson(4.0,",
      (T + "local/test_controls.py::test_interval_coverage_on_a_planted_classifier_is_the_nominal_level",),
      "resample weights Poisson(4): intervals too narrow"),
    M("bootstrap_quantiles", "core/bootstrap.py", "np.quantile(means, [alpha / 2, 1 - alpha / 2], axis=0)",
      "np.quantile(means, [alpha, 1 - alpha], axis=0)",
      (T + "local/test_controls.py::test_interval_coverage_on_a_planted_classifier_is_the_nominal_level",),
      "percentile interval at alpha, not alpha / 2"),
    M("bootstrap_resample_mean", "core/bootstrap.py", "return self.sums[keep] / self.weights[keep, None]",
      "return self.sums[keep] / self.n", (ORC + "test_poisson_bootstrap_equals_a_slow_reference",),
      "resampled means divided by n, not the resample's weight"),
    # ---------------- the task layer ----------------
    M("auroc_fpr", "core/task.py", "fpr = np.r_[0.0, fps / (len(y) - pos)]", "fpr = np.r_[0.0, fps / len(y)]",
      (ORC + "test_binary_metrics_equal_sklearn",), "AUROC false-positive rate over all samples"),
    M("average_precision_steps", "core/task.py", "ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))",
      "ap = float(np.mean(precision))", (ORC + "test_binary_metrics_equal_sklearn",),
      "AP as the mean precision"),
    M("ranking_ties", "core/task.py", "distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]",
      "distinct = np.arange(len(s))", (ORC + "test_binary_metrics_equal_sklearn",),
      "tied scores treated as distinct thresholds"),
    M("r2_constant_target", "core/task.py", "out = np.where(sse == 0, 1.0, 0.0)", "out = np.where(sse == 0, 0.0, 0.0)",
      (ORC + "test_r2_equals_sklearn_with_constant_targets",), "a perfectly predicted constant target scores 0"),
    M("confusion_transposed", "core/task.py", "np.bincount(code, minlength=k * k).reshape(k, k).astype",
      "np.bincount(code, minlength=k * k).reshape(k, k).T.astype", (ORC + "test_confusion_and_iou_equal_sklearn",),
      "confusion matrix transposed"),
    M("iou_union", "core/task.py", "union = tp + fp + fn", "union = tp + fp",
      (ORC + "test_confusion_and_iou_equal_sklearn",), "IoU without the false negatives"),
    M("multilabel_loss_mean", "core/task.py", "return -xp.mean(t * log_p + (1.0 - t) * log_q, axis=1)",
      "return -xp.sum(t * log_p + (1.0 - t) * log_q, axis=1)", (ORC + "test_task_losses_equal_sklearn",),
      "multi-label loss summed over labels"),
    M("regression_loss_mean", "core/task.py", "return xp.mean(xp.square(out - t), axis=1)",
      "return xp.sum(xp.square(out - t), axis=1)", (ORC + "test_task_losses_equal_sklearn",),
      "regression loss summed over targets"),
    M("segmentation_target_range", "core/task.py", "if y.size and (y.min() < 0 or y.max() >= k):",
      "if y.size and (y.min() < 0 or y.max() > k):", (ORC + "test_targets_checks_refuse_out_of_range",),
      "a mask class equal to K is accepted"),
    M("regression_target_finite", "core/task.py", "y = y.astype(np.float64)\n        if not np.all(np.isfinite(y)):",
      "y = y.astype(np.float64)\n        if False:",
      (ORC + "test_targets_checks_refuse_out_of_range",), "NaN regression targets accepted"),
    M("metrics_f1", "core/metrics.py", "denom = 2 * self.tp + self.fp + self.fn", "denom = 2 * self.tp + self.fp",
      (T + "local/test_tasks.py::test_multilabel_layer_table_equals_sklearn_metrics",), "F1 without false negatives"),
    M("metrics_rmse", "core/metrics.py", 'out["rmse"] = np.sqrt(self.sse.mean(axis=1) / n)',
      'out["rmse"] = np.sqrt(self.sse.sum(axis=1) / n)',
      (T + "local/test_tasks.py::test_regression_layer_table_equals_sklearn_and_bootstrap_equals_a_slow_reference",),
      "RMSE summed over targets"),
    # ---------------- segmentation ----------------
    M("resolution_nearest", "core/resolution.py", "(np.arange(S, dtype=np.int64) * s) // S",
      "(np.arange(S, dtype=np.int64) * s + S - 1) // S",
      (T + "global_/test_segmentation_association.py::test_iou_equals_numpy_reference",),
      "ceil instead of floor: another block cell per pixel"),
    M("dissection_threshold", "global_/dissection.py", "out[c] = self.lo[c] + (j + 1 - frac) * self.width[c]",
      "out[c] = self.lo[c] + (j + frac) * self.width[c]",
      (T + "global_/test_streaming_quantile.py",), "quantile threshold interpolated the wrong way"),
    M("segmentation_true_positives", "local/segmentation.py", "weights=(pred == hard)", "weights=(pred != hard)",
      (T + "local/test_segmentation_controls_bootstrap.py::"
       "test_bootstrap_intervals_equal_a_slow_sklearn_reference_whatever_the_batch",),
      "per-sample true positives (bootstrap) counted on the errors"),
    M("segmentation_probe_bias", "local/segmentation.py", "out.append((w, bias - mean @ w))",
      "out.append((w, bias))", (T + "local/test_segmentation.py::test_explain_masks_and_plot",),
      "per-position probe loses its centring"),
    M("segmentation_argmax_ties_up", "local/segmentation.py", "pred[lt[j] > m] = j", "pred[lt[j] >= m] = j",
      (T + "local/test_segmentation.py::test_class_major_max_and_argmax_equal_numpy",),
      "the layer table's class of a tie goes to the higher class"),
    M("segmentation_loss_row_major", "local/segmentation.py",
      "z = np.take(lt, np.asarray(hard, np.int64) * p + at)", "z = np.take(lt, np.asarray(hard, np.int64) + at * k)",
      (T + "local/test_segmentation.py::test_target_log_loss_equals_scipy_log_softmax",),
      "the targets' logits read row-major from class-major logits"),
    M("collect_keeps_views", "core/data_pass.py", "return v.copy() if v.base is not None else v", "return v",
      (T + "core/test_side_model_reuse.py::test_kept_samples_do_not_hold_their_batch_outputs",),
      "a reducer's kept samples are views that hold the whole batch's output buffers"),
    M("atlas_crops_moved_missed", "global_/atlas.py",
      "moved = np.flatnonzero(np.any(order != np.arange(k_now)[:, None], axis=0))",
      "moved = np.flatnonzero(np.all(order != np.arange(k_now)[:, None], axis=0))",
      (T + "global_/test_atlas.py::test_each_crop_is_the_input_sliced_at_its_box",),
      "kept crops not moved with their ranks (the atlas shows another sample's crop)"),
    M("parallel_results_reordered", "core/parallel.py", "yield pending.popleft().result()\n        while",
      "yield pending.pop().result()\n        while",
      (T + "core/test_parallel.py::test_results_are_the_loop_s_in_input_order",),
      "threaded results returned out of input order"),
    M("parallel_health_not_shared", "core/health.py",
      "_state.stack = stack if stack else []", "_state.stack = []",
      (T + "core/test_parallel.py::test_tasks_run_in_the_caller_s_context_and_their_findings_join_its_health",),
      "a threaded task's health findings miss the report's health section"),
    # ---------------- input drift (core/drift.py) ----------------
    M("drift_range_unwidened", "core/drift.py", "bad = (low < ref_min - margin) | (high > ref_max + margin)",
      "bad = (low < ref_min) | (high > ref_max)",
      (T + "core/test_drift.py::test_few_samples_are_checked_against_the_widened_fitted_range",),
      "the fitted range not widened"),
    M("drift_range_only_from_min_samples", "core/drift.py",
      'elif "min" in reference and "max" in reference and moments.min is not None:',
      'elif False:', (T + "core/test_drift.py::test_explain_of_one_rescaled_sample_warns",),
      "a few samples unchecked (the old silence)"),
    M("drift_min_not_accumulated", "core/data_pass.py",
      "self._min = lo if self._min is None else np.minimum(self._min, lo)", "self._min = lo",
      (T + "core/test_drift.py::test_input_moments_range_equals_numpy_over_batches",), "the last batch's minimum"),
    M("input_moments_m2_not_centred", "core/data_pass.py", 'm2b = np.einsum("ij,ij->i", dev, dev)',
      'm2b = np.einsum("ij,ij->i", cols, cols)',
      (T + "core/test_drift.py::test_input_moments_range_equals_numpy_over_batches",), "raw second moment as M2"),
    # ---------------- the report's Training section ----------------
    M("training_late_window_whole_run", "report_sections/training.py",
      "late = epochs >= epochs[-1] / 2.0", "late = epochs >= 0",
      (T + "presentation/test_training_section.py::test_the_planted_story_is_found",),
      "early swings counted as late falls"),
    M("training_died_by_range", "report_sections/training.py",
      "died[j] = dead[rec[-1], j] - dead[rec[0], j]", "died[j] = np.nanmax(dead[:, j]) - np.nanmin(dead[:, j])",
      (T + "presentation/test_training_section.py::test_the_planted_story_is_found",), "revived filters as died"),
    M("training_noise_one_se", "report_sections/training.py", "NOISE_SES = 2.0", "NOISE_SES = 1.0",
      (T + "presentation/test_training_section.py::test_a_drop_within_the_binomial_noise_of_the_evaluation_samples_is_"
       "not_a_finding",), "one standard error"),
    # ---------------- concepts (TCAV) ----------------
    M("cav_raw_units", "local/concepts.py", "            v = weights * scale\n", "            v = weights\n",
      (CON + "test_fit_cav_equals_sklearn_logistic_regression",), "CAV left in standardized units"),
    M("cav_pooled_mean_not_sum", "local/concepts.py",
      "d = ops.reshape(d, (-1,) + (1,) * (len(shape) - 1) + (shape[-1],))",
      "d = ops.reshape(d, (-1,) + (1,) * (len(shape) - 1) + (shape[-1],)) / float(np.prod(shape[:-1]))",
      (CON + "test_directional_derivatives_equal_finite_differences",),
      "pooled derivative of the mean shift instead of the shift at every position"),
    M("tcav_score_every_input", "local/concepts.py", "self.positive[i] += member.T @ (s > 0)",
      "self.positive[i] += np.ones_like(member).T @ (s > 0)",
      (CON + "test_tcav_scores_and_magnitudes_equal_those_of_finite_differences",),
      "positive derivatives counted over every input, not the class's"),
    M("tcav_sets_test_scale", "local/concepts.py", "(sd * math.sqrt(1.0 + 1.0 / len(null)))",
      "(sd / math.sqrt(len(null)))", (CON + "test_the_t_tests_equal_scipy",),
      "the concept treated as the mean of many sets"),
    M("holm_not_monotone", "local/concepts.py",
      "adj = np.minimum(1.0, np.maximum.accumulate((m - ranks + 1) * s))",
      "adj = np.minimum(1.0, (m - ranks + 1) * s)", (CON + "test_the_corrections",), "Holm without the step-down max"),
    M("concept_accuracy_wrong_rows", "local/concepts.py",
      "return np.concatenate([features[split.test], pool[held_out[:n]]]), np.concatenate([np.ones(n), np.zeros(n)])",
      "return np.concatenate([features[split.train[:n]], pool[held_out[:n]]]), np.concatenate([np.ones(n), "
      "np.zeros(n)])",
      (CON + "test_accuracy_is_the_held_out_accuracy_of_the_cavs",), "accuracy on training examples"),
    M("callback_concept_pool", "callback.py",
      'pool = feats[i] if st["pool_is_subset"] else values[bounds[-1]:]', "pool = feats[i]",
      (T + "integration/test_callback_concepts.py::test_one_row_per_epoch_concept_and_block_equal_to_sklearn_on_"
       "the_same_features",), "concept_random ignored: the random sets read from the validation subset"),
    M("callback_concept_half", "callback.py", "float(correct.mean())", "float(correct[:len(correct) // 2].mean())",
      (T + "integration/test_callback_concepts.py::test_one_row_per_epoch_concept_and_block_equal_to_sklearn_on_"
       "the_same_features",), "concept accuracy on the concept's held-out examples only"),
]


# ----------------------------------------------------------------------
def package_files():
    return sorted(glob.glob(os.path.join(PKG, "**", "*.py"), recursive=True))


def locate(m: Mutant) -> str:
    """The file holding ``m.original`` exactly once (in the whole package); a clear error otherwise."""
    hint = os.path.join(PKG, m.file)
    where = []
    for path in package_files():
        with open(path, encoding="utf-8") as fh:
            k = fh.read().count(m.original)
        if k:
            where.append((path, k))
    total = sum(k for _, k in where)
    if total != 1:
        places = ", ".join(f"{os.path.relpath(p, ROOT)} x{k}" for p, k in where) or "nowhere"
        raise SystemExit(
            f"mutant {m.name!r}: its snippet must occur exactly once in keras_hybrid_interp/, found {places} "
            f"(the code moved or changed; update the snippet in scripts/mutants.py):\n    {m.original!r}"
        )
    path = where[0][0]
    if path != hint:
        print(f"note: mutant {m.name!r}: snippet now in {os.path.relpath(path, ROOT)} (listed as {m.file})",
              file=sys.stderr)
    return path


def drop_bytecode(path: str) -> None:
    base = os.path.splitext(os.path.basename(path))[0]
    for pyc in glob.glob(os.path.join(os.path.dirname(path), "__pycache__", base + ".*.pyc")):
        try:
            os.remove(pyc)
        except OSError:
            pass


def restore(path: str, original_text: str, mutated_text: str, m: Mutant) -> None:
    """Puts the original snippet back. If someone else edited the file meanwhile, only the
    mutated snippet is reverted (their edit stays); otherwise the original file is written back."""
    try:
        with open(path, encoding="utf-8") as fh:
            now = fh.read()
    except OSError:
        now = mutated_text
    if now == mutated_text or now.count(m.replacement) != 1:
        text = original_text
    else:
        text = now.replace(m.replacement, m.original)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    drop_bytecode(path)


def run_tests_forked(tests) -> tuple[int, str]:
    """Runs pytest on ``tests`` in a forked child (the package is imported afresh there)."""
    import tempfile

    with tempfile.TemporaryFile(mode="w+b") as log:
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                check_imports_the_tree()
                import pytest

                rc = pytest.main(["-q", "-x", "-p", "no:cacheprovider", "--no-header", "-W", "ignore", *tests])
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(int(rc))
            except BaseException:  # noqa: BLE001 - the child must never return into the parent's loop
                import traceback

                traceback.print_exc()
                sys.stderr.flush()
                os._exit(99)
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        log.seek(0)
        return rc, log.read().decode("utf-8", "replace")


def check_imports_the_tree() -> None:
    """The tests must import the package from this tree (where the mutant is), not an installed copy:
    ``.ci/run`` installs the project non-editable, and ``pytest.main`` does not put the tree on the path."""
    sys.path.insert(0, ROOT)
    import keras_hybrid_interp

    got = os.path.dirname(os.path.abspath(keras_hybrid_interp.__file__))
    if got != PKG:
        print(f"keras_hybrid_interp imported from {got}, not from {PKG}: a mutant there would go unseen.")
        sys.stdout.flush()
        os._exit(98)


def run_tests_subprocess(tests) -> tuple[int, str]:
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header",
                        "-W", "ignore", *tests], cwd=ROOT, env=env, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def preload():
    """Imports the heavy dependencies once, in the parent (never the package itself)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib.pyplot  # noqa: F401
    import pandas  # noqa: F401
    import pytest  # noqa: F401
    import scipy.optimize  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.metrics  # noqa: F401

    import keras  # noqa: F401

    assert "keras_hybrid_interp" not in sys.modules


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    ap.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this mutant (repeatable)")
    ap.add_argument("--subprocess", action="store_true", help="one fresh interpreter per mutant instead of a fork")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the first run of every listed test on the unmutated code")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the test output of each mutant")
    args = ap.parse_args(argv)

    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate mutant names")
    chosen = MUTANTS
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"unknown mutant(s) {unknown}; see --list")
        chosen = [m for m in MUTANTS if m.name in args.only]
    paths, stale = {}, []
    for m in chosen:  # every snippet checked before anything is planted
        try:
            paths[m.name] = locate(m)
        except SystemExit as e:
            stale.append(str(e))
    if stale:
        raise SystemExit("\n".join(stale))

    if args.list:
        for m in chosen:
            print(f"{m.name}\t{os.path.relpath(paths[m.name], ROOT)}\t{m.why}\t{' '.join(m.tests)}")
        return 0

    os.chdir(ROOT)
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    sys.dont_write_bytecode = True
    fork = hasattr(os, "fork") and not args.subprocess
    if fork:
        preload()
    runner = run_tests_forked if fork else run_tests_subprocess
    start = time.perf_counter()
    if not args.no_baseline:
        # The tests must pass on the code as it is: otherwise every mutant would look caught.
        ids = list(dict.fromkeys(t for m in chosen for t in m.tests))
        rc, out = runner(ids)
        print(f"baseline (no mutant, {len(ids)} test ids): {'pass' if rc == 0 else 'FAIL'} "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        if rc != 0:
            print("\n".join(out.splitlines()[-40:]))
            print("The tests fail without any mutant: fix that first.")
            return 2
    rows = []
    for m in chosen:
        path = paths[m.name]
        with open(path, encoding="utf-8") as fh:
            original_text = fh.read()
        if original_text.count(m.original) != 1:  # changed since locate()
            raise SystemExit(f"mutant {m.name!r}: snippet no longer found exactly once in {path}")
        mutated_text = original_text.replace(m.original, m.replacement)
        t0 = time.perf_counter()
        try:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(mutated_text)
            drop_bytecode(path)
            rc, out = runner(m.tests)
        finally:
            restore(path, original_text, mutated_text, m)
        dt = time.perf_counter() - t0
        if rc == 0:
            verdict = "SURVIVED"
        elif rc in (1, 99):
            verdict = "caught"
        else:  # 2: interrupted/collection error, 4: usage error, 5: no tests collected
            verdict = f"ERROR rc={rc}"
        rows.append((m, os.path.relpath(path, PKG), verdict, dt))
        print(f"{verdict:>9}  {dt:6.1f}s  {m.name}", flush=True)
        if args.verbose or verdict.startswith("ERROR"):
            print("\n".join(out.splitlines()[-25:]))
    total = time.perf_counter() - start

    w = max(len(m.name) for m, *_ in rows)
    print()
    print(f"{'mutant':<{w}}  {'file':<28}  {'result':<9}  {'seconds':>7}")
    print(f"{'-' * w}  {'-' * 28}  {'-' * 9}  {'-' * 7}")
    for m, f, verdict, dt in rows:
        print(f"{m.name:<{w}}  {f:<28}  {verdict:<9}  {dt:7.1f}")
    caught = sum(v == "caught" for _, _, v, _ in rows)
    bad = len(rows) - caught
    print(f"\n{caught} of {len(rows)} mutants caught, {bad} survived or errored; total {total:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

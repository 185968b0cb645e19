"""The training log: ``say`` prints one line; the others build a line from plain values (tests/test_training_messages.py)."""

from __future__ import annotations


def say(msg: str) -> None:
    """One line in the training log. Printed, not logged: sd-scripts puts a rich handler on the
    root logger, so logging as well would show every line twice."""
    print(f"kohya-ext: {msg}", flush=True)


def reference_ready(seconds: float, info: dict, n_prompts: int, deadline: float, prompt_characters: list[str] | None) -> str:
    """The worker's reference is loaded: faces, prompts, deadline, and per character when several."""
    counts, chars = info.get("counts") or {}, info.get("characters") or {}
    return (f"consistency reference ready in {seconds:.1f} s "
            f"({counts.get('usable', '?')} usable faces of {counts.get('images', '?')} images; {n_prompts} prompts; "
            f"scoring deadline {deadline:g} s)"
            + ("" if not prompt_characters else "; characters scored against their own reference: "
               + ", ".join(f"{c} ({prompt_characters.count(c)} prompts, {chars.get(c, {}).get('usable', '?')} faces)"
                           for c in sorted(set(prompt_characters)))))


def evaluation(global_step: int, trigger: str, row: dict, memorization_max: float) -> str:
    """One scored evaluation: its score, detection rate, new best, or memorised (never crowned)."""
    return (f"step {global_step} ({trigger}): consistency {row['score']:.4f}, detection {100 * row['detection_rate']:.0f}%"
            + (" - new best" if row["is_best"] else "")
            + (f" (memorised: {100 * row['memorization']:.0f}% near-copies of training images > {100 * memorization_max:.0f}%: "
               "not crowned best)" if row.get("memorized") else ""))


def fit_end(rows: list[dict], best: dict | None, best_file: str, stop_message: str | None) -> str:
    """The run's last line: the best evaluation and its copy, how many evaluations, why it stopped early."""
    n_ok = sum(1 for r in rows if r.get("status") == "ok")
    n_fail = len(rows) - n_ok
    if best is None:
        return f"no best checkpoint: {n_ok} evaluation(s) scored, {n_fail} failed"
    return (f"best consistency {best['score']:.4f} at step {best['kohya_step']} (cumulative {best['cum_step']}, epoch {best['epoch']}, "
            f"{best.get('checkpoint')}) -> {best_file}; {len(rows)} evaluation(s): {n_ok} scored, {n_fail} failed"
            + (f"; stopped early: {stop_message}" if stop_message is not None else ""))


def resumed(kept: list[dict], abandoned: list[dict], best: dict | None, wait: int | None) -> str:
    """What a resume kept; ``wait``: evaluations without improvement (None without early stopping)."""
    return (f"{len(kept)} evaluation(s) kept"
            + (f", {len(abandoned)} from the replaced continuation set aside" if abandoned else "")
            + (f"; best {best['score']:.4f} at cumulative step {best['cum_step']}" if best else "")
            + (f"; {wait} evaluation(s) without improvement so far" if wait is not None else ""))

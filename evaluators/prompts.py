"""Multiple-choice prompts in the study's fixed format (DESIGN.md, "Scoring").

A zero-shot prompt is the question, one line per option and a final "Answer:" with no trailing
space (the option scorer prepends " " to each continuation, as lm-evaluation-harness does)::

    What is 2 + 2?
    A. 3
    B. 4
    Answer:

A k-shot prompt prepends each example as its own prompt, a space, its gold letter and a blank
line, so the example answers have exactly the form the model is asked to continue with::

    What is 1 + 1?
    A. 2
    B. 3
    Answer: A

    What is 2 + 2?
    A. 3
    B. 4
    Answer:
"""

from __future__ import annotations

from collections.abc import Sequence

LETTERS = "ABCDEFGHIJ"
MIN_OPTIONS = 2
MAX_OPTIONS = len(LETTERS)

# (question, options, index of the gold option)
FewShotExample = tuple[str, Sequence[str], int]


def format_question(question: str, options: Sequence[str]) -> str:
    """One question in the prompt format, ending in "Answer:" (no trailing space)."""
    if not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
        raise ValueError(
            f"a question needs {MIN_OPTIONS} to {MAX_OPTIONS} options (letters {LETTERS}), "
            f"got {len(options)}"
        )
    lines = [question]
    lines.extend(f"{letter}. {option}" for letter, option in zip(LETTERS, options, strict=False))
    lines.append("Answer:")
    return "\n".join(lines)


def format_prompt(
    question: str, options: Sequence[str], fewshot: Sequence[FewShotExample] = ()
) -> str:
    """The full prompt: the k few-shot examples, answered, then the unanswered question.

    Raises ValueError for fewer than 2 or more than 10 options (in the question or an example)
    and for an example whose gold index is not one of its options.
    """
    parts = []
    for example_question, example_options, gold in fewshot:
        if not 0 <= gold < len(example_options):
            raise ValueError(
                f"few-shot gold index {gold} is out of range for {len(example_options)} options"
            )
        parts.append(f"{format_question(example_question, example_options)} {LETTERS[gold]}\n\n")
    parts.append(format_question(question, options))
    return "".join(parts)

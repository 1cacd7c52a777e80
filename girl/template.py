"""The paper's prompt template (GIRL §3.1): four parts, role, instruction, input (the CV), output (the JD).

    [BOS] role · instruction · input: CV · output: JD [EOS]

At inference the output part is left empty and G writes J′ after it. The CV is encoded on its own and the
pieces are concatenated as token ids, so a long CV can be cut without re-tokenizing the rest, and
training and generation see exactly the same prompt tokens.
"""

TEMPLATE = {
    "zh": dict(role="【角色】你是一名资深招聘顾问。\n",
               instruction="【指令】请根据下面求职者的简历，为其撰写一份最合适的职位描述。\n",
               input="【输入】\n",
               output="\n【输出】\n"),
    "en": dict(role="### Role: You are an experienced recruitment consultant.\n",
               instruction="### Instruction: Read the job seeker's CV below and write the job description that suits them best.\n",
               input="### Input:\n",
               output="\n### Output:\n"),
}


def prompt_ids(tok, cv: str, lang: str, max_cv_tokens: int | None = None) -> tuple[list[int], bool]:
    """Token ids of the prompt for one CV (output part empty), and whether the CV was cut to fit."""
    t = TEMPLATE[lang]
    head = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(t["role"] + t["instruction"] + t["input"])
    cv_ids = tok.encode(cv)
    cut = max_cv_tokens is not None and len(cv_ids) > max_cv_tokens
    if cut:
        cv_ids = cv_ids[:max_cv_tokens]
    return head + cv_ids + tok.encode(t["output"]), cut


def template_overhead(tok, lang: str) -> int:
    """Tokens the template adds around the CV."""
    return len(prompt_ids(tok, "", lang)[0])

//! Golden table: clearly trivial prompts score below clearly hard ones with the committed
//! weights. The prompts are written for this test (not taken from any evaluation set).

use prompt_router::classify::{Classifier, Part, Shape};

const TRIVIAL: &[&str] = &[
    "hi",
    "Hello!",
    "Thanks, that's all.",
    "What is the capital of France?",
    "Translate 'good morning' into Spanish.",
    "Who wrote Hamlet?",
    "Define photosynthesis.",
    "What's 2 + 2?",
    "Give me a synonym for happy.",
    "Spell 'necessary'.",
    "When was the Eiffel Tower built?",
    "List three colors.",
    "Summarize: The meeting is moved to Friday.",
    "What does NASA stand for?",
    "Hey, how are you?",
    "What is the meaning of 'ephemeral'?",
];

const HARD: &[&str] = &[
    "Prove that there are infinitely many primes p such that p ≡ 3 (mod 4). Explain each step of the argument, state which lemmas you use, and then derive a lower bound for the number of such primes below N. Finally, compare your bound with what Dirichlet's theorem gives and explain why the two differ.",
    "I have this Python function and it returns the wrong result for nested lists. Explain why, step by step, and fix it without changing its signature:\n```python\ndef flatten(xs, out=[]):\n    for x in xs:\n        if isinstance(x, list):\n            flatten(x, out)\n        else:\n            out.append(x)\n    return out\n```\nThen write unit tests that cover the edge cases, including empty lists, deep nesting and repeated calls.",
    "Design a rate limiter for a distributed API gateway that handles 200k requests per second across 12 regions. Compare token bucket, sliding window log and sliding window counter approaches, analyse their memory and consistency trade-offs, explain how you would handle clock skew and network partitions, and justify which one you would pick. Your answer must include failure modes and must not rely on a single central store.",
    "Statement 1 | Every finite integral domain is a field. Statement 2 | Every field of characteristic zero is infinite. For each statement, decide whether it is true or false, and justify your answer with a proof or a counterexample. Then explain whether the converse of each statement holds.",
    "Consider the following scenario: a company must decide whether to recall a product after 3 out of 10,000 units failed in the field. The recall costs $2.4M, each failure costs $150k in liability, and the failure rate may increase by 40% in cold climates, which account for a third of sales. Analyze the expected costs under both choices, state your assumptions, estimate the uncertainty, and recommend a decision with a sensitivity analysis.",
    "Write a Rust function that parses an arbitrary-precision decimal string (with optional sign, exponent and underscores) into a normalized (mantissa, exponent) pair without allocating, and explain why each branch is needed:\n\n    fn parse(s: &str) -> Result<(u128, i32), ParseError> {\n        // your code here\n    }\n\nThe function must reject inputs like \"1__0\", \"+-1\" and \"1e\", must handle values up to 38 digits exactly, and should run in O(n). Then prove that your normalization is unique.",
    "Let f(x) = x^3 − 6x^2 + 9x + 1. (a) Find all critical points and classify them. (b) Determine the intervals where f is concave up. (c) Compute the integral of f from 0 to 3 and explain why its sign follows from part (a). (d) Show that f has exactly one real root and estimate it to two decimals.",
    "Read the following argument and evaluate it: 'Since every country that raised its minimum wage saw unemployment fall within two years, raising the minimum wage reduces unemployment.' Identify the logical fallacies, explain what evidence would strengthen or weaken the conclusion, and compare it with at least two alternative explanations. Do not exceed 400 words, but make sure each point is justified.",
    "You are given a graph with n ≤ 2·10^5 vertices and m ≤ 4·10^5 weighted edges. For each query (u, v, k), determine whether there is a path from u to v that uses at most k edges of weight greater than the median edge weight. Describe an algorithm that answers q ≤ 10^5 queries efficiently, prove its correctness, analyse its complexity, and explain why a simpler BFS-based approach would be too slow.",
    "Explain, step by step, why the following SQL query returns duplicate rows, and rewrite it so that it returns each customer once with their most recent order, without using window functions:\nSELECT c.id, c.name, o.created_at FROM customers c JOIN orders o ON o.customer_id = c.id LEFT JOIN refunds r ON r.order_id = o.id WHERE r.id IS NULL OR r.amount < o.total;\nThen compare the performance of your version with a version that does use window functions.",
    "In a multi-threaded C++ program, two threads increment a shared std::atomic<int> with memory_order_relaxed while a third thread reads it and a plain bool flag. Is there a data race? Explain the C++ memory model rules that apply, derive which outcomes are possible, and show how to fix the program so that the reader never observes the flag set before the final count. Justify why your fix is sufficient and not stronger than necessary.",
    "Compare the causes of the First World War according to three historiographical schools (Fischer, the 'sleepwalkers' thesis, and structural-realist accounts). Assess the evidence each relies on, explain where they conflict, and argue which is most convincing. Your answer should be structured as: 1. summary of each school, 2. points of conflict, 3. evaluation, 4. conclusion.",
    "日本語で答えてください。次の関数の計算量を解析し、なぜ最悪の場合に O(n^2) になるのかを段階的に説明してください。また、O(n log n) にする改善案を示し、その正しさを証明してください。\ndef f(a):\n    for i in range(len(a)):\n        for j in range(i):\n            if a[j] > a[i]:\n                a[i], a[j] = a[j], a[i]\n    return a",
    "A patient aged 67 presents with progressive dyspnea, bilateral ankle edema, an S3 gallop, and a BNP of 1,450 pg/mL; echo shows an ejection fraction of 35%. They also have stage 3b CKD (eGFR 38) and a potassium of 5.4 mmol/L. Explain the likely diagnosis, evaluate which guideline-directed therapies are appropriate or contraindicated and why, and describe how you would titrate them while monitoring renal function.",
];

fn score(c: &Classifier, prompt: &str) -> f64 {
    c.classify_prompt(prompt).score()
}

#[test]
fn trivial_prompts_score_below_hard_ones() {
    let c = Classifier::new(Classifier::default_weights()).unwrap();
    assert!(TRIVIAL.len() + HARD.len() >= 30);
    let max_trivial = TRIVIAL
        .iter()
        .map(|p| (score(&c, p), *p))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap();
    let min_hard = HARD
        .iter()
        .map(|p| (score(&c, p), *p))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap();
    assert!(
        max_trivial.0 < min_hard.0,
        "trivial {max_trivial:?} scored at least as high as hard {min_hard:?}"
    );
}

#[test]
fn default_threshold_separates_most_of_the_table() {
    let c = Classifier::new(Classifier::default_weights()).unwrap();
    let t = c.threshold();
    let fast = TRIVIAL.iter().filter(|p| score(&c, p) < t).count();
    let strong = HARD.iter().filter(|p| score(&c, p) >= t).count();
    assert_eq!(fast, TRIVIAL.len(), "every trivial prompt goes fast");
    assert!(
        strong * 4 >= HARD.len() * 3,
        "{strong} of {} hard prompts go strong",
        HARD.len()
    );
}

#[test]
fn conversation_context_and_shape_raise_the_score() {
    let c = Classifier::new(Classifier::default_weights()).unwrap();
    let plain = score(&c, "Continue.");
    let mut acc = c.begin();
    acc.push(
        Part::System,
        "You are a senior reviewer. Always justify every claim.",
    );
    acc.push(Part::User { last: false }, HARD[2]);
    acc.push(
        Part::Assistant,
        "Here is a first design: token buckets per region, …",
    );
    acc.push(Part::User { last: true }, "Continue.");
    let rich = acc.finish(Shape {
        turns: 3,
        images: 1,
        tools: 2,
        max_tokens: Some(4096),
    });
    assert!(rich.score() > plain, "{} vs {plain}", rich.score());
}

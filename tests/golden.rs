//! Golden table: clearly trivial conversations score below clearly hard ones with the committed
//! weights, across domains (chit-chat, lookups, translation, code, maths, multi-step reasoning,
//! long analysis, multi-turn chat, system prompts, non-English text). Every prompt was written
//! for this test; none is taken from an evaluation set.

use prompt_router_core::classify::{Classification, Classifier, Part, Shape};

/// One conversation: its pieces in order (the last one is the newest user turn).
type Case = &'static [(Part, &'static str)];

const LAST: Part = Part::User { last: true };
const EARLIER: Part = Part::User { last: false };

const TRIVIAL: &[(&str, Case)] = &[
    ("greeting", &[(LAST, "hi")]),
    ("greeting!", &[(LAST, "Hello!")]),
    ("thanks", &[(LAST, "Thanks, that's all.")]),
    ("chit-chat", &[(LAST, "Hey, how are you?")]),
    ("capital", &[(LAST, "What is the capital of France?")]),
    ("author", &[(LAST, "Who wrote Hamlet?")]),
    ("date", &[(LAST, "When was the Eiffel Tower built?")]),
    ("acronym", &[(LAST, "What does NASA stand for?")]),
    ("definition", &[(LAST, "Define photosynthesis.")]),
    (
        "word meaning",
        &[(LAST, "What is the meaning of 'ephemeral'?")],
    ),
    ("synonym", &[(LAST, "Give me a synonym for happy.")]),
    ("spelling", &[(LAST, "Spell 'necessary'.")]),
    ("arithmetic", &[(LAST, "What's 2 + 2?")]),
    ("list", &[(LAST, "List three colors.")]),
    (
        "translation",
        &[(LAST, "Translate 'good morning' into Spanish.")],
    ),
    (
        "translation 2",
        &[(LAST, "How do you say 'thank you' in Japanese?")],
    ),
    (
        "summary",
        &[(LAST, "Summarize: The meeting is moved to Friday.")],
    ),
    ("french chit-chat", &[(LAST, "Bonjour, comment ça va ?")]),
    (
        "spanish lookup",
        &[(LAST, "¿Cuál es la capital de Italia?")],
    ),
    ("japanese greeting", &[(LAST, "こんにちは！")]),
    (
        "multi-turn chit-chat",
        &[
            (EARLIER, "Hi there!"),
            (Part::Assistant, "Hello! How can I help you today?"),
            (LAST, "Just saying hi. Have a nice day!"),
        ],
    ),
    (
        "multi-turn lookup",
        &[
            (EARLIER, "What is the capital of Canada?"),
            (Part::Assistant, "The capital of Canada is Ottawa."),
            (LAST, "And of Australia?"),
        ],
    ),
    (
        "system prompt, greeting",
        &[
            (
                Part::System,
                "You are a friendly assistant. Keep answers short.",
            ),
            (LAST, "Good morning!"),
        ],
    ),
];

const HARD: &[(&str, Case)] = &[
    (
        "probability word problem",
        &[(
            LAST,
            "A bag holds 5 red, 4 blue and 3 green marbles. You draw 4 without replacement. What is the probability that at least two colours appear exactly twice? Derive the answer step by step, then verify it by counting the complement, and explain why the two methods must agree.",
        )],
    ),
    (
        "one-line analysis request",
        &[(
            LAST,
            "Compare the New Deal with austerity policies and evaluate which worked better.",
        )],
    ),
    (
        "number theory proof",
        &[(
            LAST,
            "Prove that there are infinitely many primes p such that p ≡ 3 (mod 4). Explain each step of the argument, state which lemmas you use, and then derive a lower bound for the number of such primes below N. Finally, compare your bound with what Dirichlet's theorem gives and explain why the two differ.",
        )],
    ),
    (
        "python debugging",
        &[(
            LAST,
            "I have this Python function and it returns the wrong result for nested lists. Explain why, step by step, and fix it without changing its signature:\n```python\ndef flatten(xs, out=[]):\n    for x in xs:\n        if isinstance(x, list):\n            flatten(x, out)\n        else:\n            out.append(x)\n    return out\n```\nThen write unit tests that cover the edge cases, including empty lists, deep nesting and repeated calls.",
        )],
    ),
    (
        "system design",
        &[(
            LAST,
            "Design a rate limiter for a distributed API gateway that handles 200k requests per second across 12 regions. Compare token bucket, sliding window log and sliding window counter approaches, analyse their memory and consistency trade-offs, explain how you would handle clock skew and network partitions, and justify which one you would pick. Your answer must include failure modes and must not rely on a single central store.",
        )],
    ),
    (
        "algebra statements",
        &[(
            LAST,
            "Statement 1 | Every finite integral domain is a field. Statement 2 | Every field of characteristic zero is infinite. For each statement, decide whether it is true or false, and justify your answer with a proof or a counterexample. Then explain whether the converse of each statement holds.",
        )],
    ),
    (
        "decision analysis",
        &[(
            LAST,
            "Consider the following scenario: a company must decide whether to recall a product after 3 out of 10,000 units failed in the field. The recall costs $2.4M, each failure costs $150k in liability, and the failure rate may increase by 40% in cold climates, which account for a third of sales. Analyze the expected costs under both choices, state your assumptions, estimate the uncertainty, and recommend a decision with a sensitivity analysis.",
        )],
    ),
    (
        "rust parser",
        &[(
            LAST,
            "Write a Rust function that parses an arbitrary-precision decimal string (with optional sign, exponent and underscores) into a normalized (mantissa, exponent) pair without allocating, and explain why each branch is needed:\n\n    fn parse(s: &str) -> Result<(u128, i32), ParseError> {\n        // your code here\n    }\n\nThe function must reject inputs like \"1__0\", \"+-1\" and \"1e\", must handle values up to 38 digits exactly, and should run in O(n). Then prove that your normalization is unique.",
        )],
    ),
    (
        "calculus, multi-part",
        &[(
            LAST,
            "Let f(x) = x^3 − 6x^2 + 9x + 1. (a) Find all critical points and classify them. (b) Determine the intervals where f is concave up. (c) Compute the integral of f from 0 to 3 and explain why its sign follows from part (a). (d) Show that f has exactly one real root and estimate it to two decimals.",
        )],
    ),
    (
        "argument evaluation",
        &[(
            LAST,
            "Read the following argument and evaluate it: 'Since every country that raised its minimum wage saw unemployment fall within two years, raising the minimum wage reduces unemployment.' Identify the logical fallacies, explain what evidence would strengthen or weaken the conclusion, and compare it with at least two alternative explanations. Do not exceed 400 words, but make sure each point is justified.",
        )],
    ),
    (
        "graph algorithm",
        &[(
            LAST,
            "You are given a graph with n ≤ 2·10^5 vertices and m ≤ 4·10^5 weighted edges. For each query (u, v, k), determine whether there is a path from u to v that uses at most k edges of weight greater than the median edge weight. Describe an algorithm that answers q ≤ 10^5 queries efficiently, prove its correctness, analyse its complexity, and explain why a simpler BFS-based approach would be too slow.",
        )],
    ),
    (
        "sql",
        &[(
            LAST,
            "Explain, step by step, why the following SQL query returns duplicate rows, and rewrite it so that it returns each customer once with their most recent order, without using window functions:\nSELECT c.id, c.name, o.created_at FROM customers c JOIN orders o ON o.customer_id = c.id LEFT JOIN refunds r ON r.order_id = o.id WHERE r.id IS NULL OR r.amount < o.total;\nThen compare the performance of your version with a version that does use window functions.",
        )],
    ),
    (
        "memory model",
        &[(
            LAST,
            "In a multi-threaded C++ program, two threads increment a shared std::atomic<int> with memory_order_relaxed while a third thread reads it and a plain bool flag. Is there a data race? Explain the C++ memory model rules that apply, derive which outcomes are possible, and show how to fix the program so that the reader never observes the flag set before the final count. Justify why your fix is sufficient and not stronger than necessary.",
        )],
    ),
    (
        "historiography",
        &[(
            LAST,
            "Compare the causes of the First World War according to three historiographical schools (Fischer, the 'sleepwalkers' thesis, and structural-realist accounts). Assess the evidence each relies on, explain where they conflict, and argue which is most convincing. Your answer should be structured as: 1. summary of each school, 2. points of conflict, 3. evaluation, 4. conclusion.",
        )],
    ),
    (
        "japanese complexity analysis",
        &[(
            LAST,
            "日本語で答えてください。次の関数の計算量を解析し、なぜ最悪の場合に O(n^2) になるのかを段階的に説明してください。また、O(n log n) にする改善案を示し、その正しさを証明してください。\ndef f(a):\n    for i in range(len(a)):\n        for j in range(i):\n            if a[j] > a[i]:\n                a[i], a[j] = a[j], a[i]\n    return a",
        )],
    ),
    (
        "clinical reasoning",
        &[(
            LAST,
            "A patient aged 67 presents with progressive dyspnea, bilateral ankle edema, an S3 gallop, and a BNP of 1,450 pg/mL; echo shows an ejection fraction of 35%. They also have stage 3b CKD (eGFR 38) and a potassium of 5.4 mmol/L. Explain the likely diagnosis, evaluate which guideline-directed therapies are appropriate or contraindicated and why, and describe how you would titrate them while monitoring renal function.",
        )],
    ),
    (
        "german contract analysis",
        &[(
            LAST,
            "Analysiere die folgende Vertragsklausel und erkläre Schritt für Schritt, warum sie nach deutschem Recht unwirksam sein könnte: „Der Mieter trägt sämtliche Reparaturen ohne Rücksicht auf ein Verschulden.“ Vergleiche die Rechtslage mit einer Kleinreparaturklausel, begründe jede Aussage und nenne mögliche Gegenargumente.",
        )],
    ),
    (
        "multi-turn follow-up proof",
        &[
            (
                EARLIER,
                "Give me an algorithm that finds the longest increasing subsequence of an array of n integers.",
            ),
            (
                Part::Assistant,
                "Keep an array tails where tails[k] is the smallest tail of an increasing subsequence of length k + 1; for each x, binary-search the first tail ≥ x and replace it, or append x. The answer is the final length of tails.",
            ),
            (
                LAST,
                "Now prove that this algorithm is correct: state the invariant on tails, show it holds after every step, and derive why the running time is O(n log n). Then explain how to reconstruct one longest subsequence, not just its length, without increasing the asymptotic cost.",
            ),
        ],
    ),
    (
        "system prompt, code review",
        &[
            (
                Part::System,
                "You are a senior security reviewer. Always justify every finding, cite the line it concerns, and never suggest a fix you have not reasoned through.",
            ),
            (
                LAST,
                "Review this handler for vulnerabilities and explain how each could be exploited:\n```js\napp.get('/file', (req, res) => {\n  const p = path.join(ROOT, req.query.name);\n  if (!p.startsWith(ROOT)) return res.status(403).end();\n  fs.readFile(p, (err, data) => res.send(err ? err.message : data));\n});\n```\nThen propose a corrected version and argue why it is safe against path traversal and information leaks.",
            ),
        ],
    ),
];

/// Hard prompts the classifier sends to the fast model at the default threshold, kept here so
/// the limits stay visible. A one-line proof request carries one cue word and the length of a
/// greeting; on the realistic corpus a single cue in a few words is not enough to say "hard"
/// (a short ask with one reasoning word is as often a lookup). It still scores far above "hi".
/// When a change fixes one, its test below fails: move the case to [`HARD`].
const KNOWN_MISSES: &[(&str, Case)] = &[
    (
        "one-line proof request",
        &[(LAST, "Prove that the product of two odd integers is odd.")],
    ),
    (
        "one-line classic proof",
        &[(LAST, "Prove that sqrt(2) is irrational.")],
    ),
];

const PLAIN: Shape = Shape {
    turns: 1,
    images: 0,
    tools: 0,
    max_tokens: None,
};

fn classify(c: &Classifier, case: Case) -> Classification {
    let mut acc = c.begin();
    for (part, text) in case {
        acc.push(*part, text);
    }
    let turns = case.iter().filter(|(p, _)| *p != Part::System).count();
    acc.finish(Shape {
        turns: u32::try_from(turns).unwrap_or(u32::MAX),
        ..PLAIN
    })
}

fn scores(c: &Classifier, table: &[(&'static str, Case)]) -> Vec<(f64, &'static str)> {
    table
        .iter()
        .map(|(name, case)| (classify(c, case).score(), *name))
        .collect()
}

fn default_classifier() -> Classifier {
    Classifier::with_default_weights().unwrap_or_else(|e| panic!("default weights: {e}"))
}

#[test]
fn table_covers_enough_prompts() {
    assert!(TRIVIAL.len() + HARD.len() >= 30);
}

#[test]
fn trivial_prompts_score_below_hard_ones() {
    let c = default_classifier();
    let max_trivial = scores(&c, TRIVIAL)
        .into_iter()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap();
    let min_hard = scores(&c, HARD)
        .into_iter()
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap();
    assert!(
        max_trivial.0 < min_hard.0,
        "trivial {max_trivial:?} scored at least as high as hard {min_hard:?}"
    );
}

#[test]
fn default_threshold_separates_the_table() {
    let c = default_classifier();
    let t = c.threshold();
    let fast: Vec<_> = scores(&c, TRIVIAL)
        .into_iter()
        .filter(|(s, _)| *s >= t)
        .collect();
    assert!(fast.is_empty(), "trivial prompts sent strong: {fast:?}");
    let strong = scores(&c, HARD).iter().filter(|(s, _)| *s >= t).count();
    assert!(
        strong * 4 >= HARD.len() * 3,
        "{strong} of {} hard prompts go strong",
        HARD.len()
    );
}

#[test]
fn extremes_are_clear() {
    // A greeting stays fast and a long multi-step proof stays strong even under a quality bias
    // of ±0.4, which moves the threshold 40% of the way towards 0 or 1 (policy.rs).
    let c = default_classifier();
    let t = c.threshold();
    let hi = c.classify_prompt("hi").score();
    assert!(hi < t * 0.6, "hi scored {hi}, threshold {t}");
    let proof = classify(&c, HARD[0].1).score();
    assert!(
        proof >= t + (1.0 - t) * 0.4,
        "proof scored {proof}, threshold {t}"
    );
}

#[test]
fn known_misses_still_miss() {
    let c = default_classifier();
    let hi = c.classify_prompt("hi").score();
    for (score, name) in scores(&c, KNOWN_MISSES) {
        assert!(
            score < c.threshold(),
            "{name} now scores {score} ≥ threshold {}: move it to HARD",
            c.threshold()
        );
        assert!(
            score > 3.0 * hi,
            "{name} scores {score}, hardly above hi ({hi})"
        );
    }
}

#[test]
fn conversation_context_and_shape_raise_the_score() {
    let c = default_classifier();
    let plain = c.classify_prompt("Continue.").score();
    let mut acc = c.begin();
    acc.push(
        Part::System,
        "You are a senior reviewer. Always justify every claim.",
    );
    acc.push(EARLIER, HARD[2].1[0].1);
    acc.push(
        Part::Assistant,
        "Here is a first design: token buckets per region, …",
    );
    acc.push(LAST, "Continue.");
    let rich = acc.finish(Shape {
        turns: 3,
        images: 1,
        tools: 2,
        max_tokens: Some(4096),
    });
    assert!(rich.score() > plain, "{} vs {plain}", rich.score());
}

/// The README's grpcurl examples, with the tier its comments say each gets.
const README_EXAMPLES: &[(&str, bool)] = &[
    ("What is the capital of France?", false),
    ("Prove that sqrt(2) is irrational, step by step.", true),
    ("hi", false),
];

#[test]
fn readme_examples_route_as_the_readme_says() {
    let readme = include_str!("../README.md");
    let c = default_classifier();
    for (prompt, strong) in README_EXAMPLES {
        assert!(
            readme.contains(&format!("{{\"text\": \"{prompt}\"}}"))
                || readme.contains(&format!("{{\"text\":\"{prompt}\"}}")),
            "the README no longer shows {prompt:?}"
        );
        let score = c.classify_prompt(prompt).score();
        assert_eq!(
            score >= c.threshold(),
            *strong,
            "{prompt:?} scores {score}, threshold {}",
            c.threshold()
        );
    }
}

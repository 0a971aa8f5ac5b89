//! Keyword families: general-purpose cue phrases matched by one Aho-Corasick automaton.
//!
//! A pattern is a whole word (or phrase) unless it ends in `*`, which makes it a stem
//! ("analy*" matches "analyse", "analysis", "analytical"). Word boundaries are only checked on
//! the sides of a pattern that are alphanumeric, so "(a)" or "==" match anywhere. Patterns that
//! start with `\n` match at the start of a line; the start of every text piece counts as a line
//! start. Matching is ASCII case-insensitive.
//!
//! Natural-language cues (every family but code, maths and layout) do not count right after a
//! `.` or right before a `(`: there the word is an identifier in code (`list(text)`,
//! `"{}".format(x)`), not something the user asks for. Without this, code full of `list(…)`
//! read as a "simple task" and pulled code prompts towards the fast model.

/// A family of cue patterns; each family becomes one count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// Asks for a chain of inference: prove, derive, why, step by step, how many…
    Reasoning,
    /// Asks to weigh or judge: compare, evaluate, trade-off, implications…
    Analysis,
    /// Programming-language syntax and library calls.
    CodeKeyword,
    /// Mathematical vocabulary.
    MathWord,
    /// Requirements on the answer: must, at most, exactly, do not…
    Constraint,
    /// Several sub-questions or statements to handle: "statement 1", "(b)", "secondly"…
    MultiPart,
    /// Negation and exclusion, which flip what has to be checked.
    Negation,
    /// Lookup, chit-chat and light rewriting requests.
    SimpleTask,
    /// Requests for a long or complete artefact: essay, implement, in detail…
    LongOutput,
    /// Lines that start a list item: "1.", "b)", "- ", "* ".
    Enumeration,
    /// Lines indented by at least two spaces or a tab.
    Indentation,
    /// Fenced or tagged code blocks.
    CodeFence,
    /// Sentence ends: `.`, `?` or `!` followed by a space or newline.
    SentenceEnd,
}

/// Number of families.
pub(crate) const NUM_FAMILIES: usize = 13;

/// The patterns of every family. Kept general-purpose on purpose: no subject names and no
/// wording copied from any evaluation set.
pub(crate) const FAMILIES: [(Family, &[&str]); NUM_FAMILIES] = [
    (
        Family::Reasoning,
        &[
            "prove",
            "proof",
            "derive*",
            "derivation",
            "why",
            "step by step",
            "step-by-step",
            "explain*",
            "justify",
            "calculat*",
            "compute",
            "solve",
            "determine",
            "deduce",
            "infer*",
            "reasoning",
            "how many",
            "how much",
            "show that",
            "therefore",
            "hence",
            "thus",
            "implies",
            "if and only if",
            "must be true",
            "follows that",
            "logically",
            "suppose",
            "assum*",
            "given that",
            "what would",
            "would happen",
            "most likely",
        ],
    ),
    (
        Family::Analysis,
        &[
            "analy*",
            "compar*",
            "contrast",
            "assess*",
            "evaluat*",
            "critique",
            "critici*",
            "implication*",
            "trade-off*",
            "tradeoff*",
            "pros and cons",
            "argument*",
            "evidence",
            "interpret*",
            "conclu*",
            "strengthen*",
            "weaken*",
            "valid*",
            "relationship",
            "consequence*",
            "justif*",
        ],
    ),
    (
        Family::CodeKeyword,
        &[
            "def",
            "return",
            "elif",
            "else:",
            "import",
            "lambda",
            "print(",
            "println",
            "printf",
            "console.log",
            "#include",
            "public static",
            "void",
            "fn",
            "let mut",
            "const",
            "var",
            "function(",
            "function ",
            "struct",
            "=>",
            "->",
            "::",
            "==",
            "!=",
            "+=",
            "-=",
            "&&",
            "||",
            "++",
            "self.",
            "this.",
            "null",
            "none",
            "true",
            "false",
            "len(",
            "range(",
            ".append(",
            ".join(",
            ".split(",
            ".replace(",
            ".format(",
            "for (",
            "for i in",
            "while (",
            "while ",
            "if (",
            "} else",
            "try:",
            "except",
            "catch (",
            "throw ",
            "raise ",
            "assert ",
            "select *",
            "std::",
            "):",
            "];",
            ");",
        ],
    ),
    (
        Family::MathWord,
        &[
            "equation*",
            "integral*",
            "derivative*",
            "matri*",
            "probabilit*",
            "polynomial*",
            "theorem*",
            "lemma",
            "variance",
            "prime",
            "ratio",
            "percent*",
            "sqrt",
            "log",
            "sin",
            "cos",
            "tan",
            "modulo",
            "vertices",
            "vertex",
            "area",
            "volume",
            "median",
            "average",
            "sum",
            "factor*",
            "integer*",
            "fraction*",
            "radius",
            "angle*",
            "f(x)",
            "infinit*",
            "vector*",
            "eigen*",
            "expected value",
            "standard deviation",
            "solve for",
            "divisible",
            "remainder",
        ],
    ),
    (
        Family::Constraint,
        &[
            "must",
            "should",
            "at least",
            "at most",
            "no more than",
            "no less than",
            "exactly",
            "only",
            "do not",
            "don't",
            "always",
            "ensure",
            "required",
            "requirement*",
            "within",
            "format*",
            "strictly",
            "unless",
            "make sure",
            "avoid",
            "maximum",
            "minimum",
            "constraint*",
            "or fewer",
            "or less",
        ],
    ),
    (
        Family::MultiPart,
        &[
            "scenario 1",
            "scenario 2",
            "statement 1",
            "statement 2",
            "part 1",
            "part 2",
            "part a",
            "part b",
            "(a)",
            "(b)",
            "(c)",
            "(i)",
            "(ii)",
            "(iii)",
            "question 1",
            "question 2",
            "case 1",
            "case 2",
            "first,",
            "second,",
            "third,",
            "firstly",
            "secondly",
            "finally,",
            "additionally",
            "in addition",
            "as well as",
            "and then",
            "after that",
            "both",
        ],
    ),
    (
        Family::Negation,
        &[
            "not",
            "no",
            "never",
            "except",
            "incorrect",
            "least",
            "neither",
            "nor",
            "cannot",
            "n't",
            "unlikely",
            "impossible",
            "without",
        ],
    ),
    (
        Family::SimpleTask,
        &[
            "what is",
            "what's",
            "who is",
            "who was",
            "when did",
            "when was",
            "where is",
            "define",
            "definition",
            "translat*",
            "summari*",
            "tl;dr",
            "list",
            "hello",
            "hi",
            "hey",
            "thanks",
            "thank you",
            "capital of",
            "meaning of",
            "synonym*",
            "antonym*",
            "spell*",
            "rephrase",
            "paraphrase",
            "what does",
            "stand for",
        ],
    ),
    (
        Family::LongOutput,
        &[
            "in detail",
            "detailed",
            "essay",
            "comprehensive",
            "thorough*",
            "write a",
            "write an",
            "implement*",
            "design",
            "full",
            "complete",
            "entire",
            "report",
            "article",
            "story",
            "program",
            "tutorial",
            "outline",
            "words long",
            "pages",
        ],
    ),
    (
        Family::Enumeration,
        &[
            "\n1.",
            "\n2.",
            "\n3.",
            "\n4.",
            "\n5.",
            "\n6.",
            "\n7.",
            "\n8.",
            "\n9.",
            "\n1)",
            "\n2)",
            "\n3)",
            "\n4)",
            "\n5)",
            "\n6)",
            "\n7)",
            "\n8)",
            "\n9)",
            "\na.",
            "\nb.",
            "\nc.",
            "\nd.",
            "\ne.",
            "\na)",
            "\nb)",
            "\nc)",
            "\nd)",
            "\ne)",
            "\n(a)",
            "\n(b)",
            "\n(c)",
            "\n(d)",
            "\n(1)",
            "\n(2)",
            "\n(3)",
            "\n- ",
            "\n* ",
            "\n\u{2022}",
        ],
    ),
    (Family::Indentation, &["\n  ", "\n\t"]),
    (
        Family::CodeFence,
        &["```", "~~~", "<code>", "[code]", "<pre>"],
    ),
    (
        Family::SentenceEnd,
        &[". ", ".\n", "? ", "?\n", "! ", "!\n"],
    ),
];

/// Families of natural-language cues, which identifiers in code can spell by accident.
const PROSE_FAMILIES: [Family; 7] = [
    Family::Reasoning,
    Family::Analysis,
    Family::Constraint,
    Family::MultiPart,
    Family::Negation,
    Family::SimpleTask,
    Family::LongOutput,
];

/// One compiled pattern: which family it counts for and which boundaries to check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PatternInfo {
    /// Index into [`FAMILIES`].
    pub family: u8,
    /// Length in bytes of the pattern as searched.
    pub len: u32,
    /// The byte before the match must not be a word byte.
    pub word_start: bool,
    /// The byte after the match must not be a word byte.
    pub word_end: bool,
    /// A cue of natural-language prose: it does not count where it reads as code, i.e. right
    /// after a `.` (a method: `.split`) or right before a `(` (a call: `list(`).
    pub prose: bool,
}

/// Bytes that continue a word: ASCII alphanumerics, `_`, and any non-ASCII byte (so a match
/// never starts or ends inside a word such as "naïve").
pub(crate) const fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Flattens [`FAMILIES`] into the searched patterns (stems lose their `*`) and their info, in
/// the same order (pattern id = index).
pub(crate) fn patterns() -> (Vec<&'static str>, Vec<PatternInfo>) {
    let mut pats = Vec::new();
    let mut info = Vec::new();
    for (family, (_, list)) in FAMILIES.iter().enumerate() {
        for raw in list.iter() {
            let (pat, stem) = match raw.strip_suffix('*') {
                Some(p) => (p, true),
                None => (*raw, false),
            };
            let bytes = pat.as_bytes();
            let first = bytes.first().copied().unwrap_or(b' ');
            let last = bytes.last().copied().unwrap_or(b' ');
            pats.push(pat);
            info.push(PatternInfo {
                family: u8::try_from(family).unwrap_or(u8::MAX),
                len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
                word_start: first.is_ascii_alphanumeric(),
                word_end: !stem && last.is_ascii_alphanumeric(),
                prose: PROSE_FAMILIES.contains(&FAMILIES[family].0),
            });
        }
    }
    (pats, info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_in_declaration_order() {
        for (i, (family, _)) in FAMILIES.iter().enumerate() {
            assert_eq!(*family as usize, i);
        }
    }

    #[test]
    fn patterns_are_lowercase_and_non_empty() {
        let (pats, info) = patterns();
        assert_eq!(pats.len(), info.len());
        for p in pats {
            assert!(!p.is_empty());
            assert_eq!(p, p.to_ascii_lowercase(), "{p}");
        }
    }
}

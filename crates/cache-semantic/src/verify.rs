//! The verifier: the guard's second stage, an order-aware alignment of the two texts.
//!
//! The guard's first stage ([`crate::guard`]) compares sets of features (numbers, negation,
//! names). The verifier aligns the two texts word by word and answers two questions the sets
//! cannot:
//!
//! * **Is the new text a repeat of the cached one?** The same words in the same roles, up to
//!   case, punctuation, contractions (`what's` = `what is`), fillers and greetings (`hi`, `um`,
//!   `please`, `thanks in advance`), articles and auxiliaries (`how do I` = `how can I`),
//!   misspellings (`reqest` = `request`: one edit in a word of five letters or more, two from
//!   nine, same first letter, at most two words, never between two known English words such as
//!   `desert` / `dessert`), and one moved block (`On my phone, how do I set up voicemail?`).
//!   A repeat is served even when a misspelling pulled the embedding's similarity below the
//!   threshold (down to [`REPEAT_FLOOR`]): for a static model one typo costs 0.2–0.4 of cosine.
//! * **Does the difference change who or what the question is about?** Rejected, whatever the
//!   similarity:
//!   * **order**: the same words in another order that is not a moved block (`from London to
//!     Manchester` / `from Manchester to London`, `convert USD to GBP` / `GBP to USD`);
//!   * **scope**: a possessor in one text only (`my password` / `my colleague's password`), a
//!     first-person question made third-person (`my` / `her`), `self-` (`employed` /
//!     `self-employed`);
//!   * **contrast**: two different members of one closed set of alternatives, one in each text
//!     (`check-in` / `check-out`, `male` / `female`, `red` / `blue`, `breakfast` / `dinner`,
//!     `online` / `paper`, `weekly` / `monthly`).
//!
//! Every rule is a general property of English questions, with a unit test of its own; none
//! names a word of the benchmark's pairs. The verifier runs for every semantic backend.
//! The rules apply only when both texts read as English: a marker word such as `the`, `what`,
//! `how` or `my`, or English function words for a fifth of their words or more. Otherwise
//! nothing is rejected (no more than before the verifier), and a repeat needs exactly the same
//! words (case, punctuation and one moved block aside).

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use crate::guard::{self, GuardReason};

/// Lowest cosine similarity at which a repeat (see the module docs) is served when it is below
/// the configured threshold. A safety net for broken embeddings, not a quality knob: the
/// alignment decides.
pub const REPEAT_FLOOR: f32 = 0.4;

/// The lowest similarity at which a repeat is served under `threshold`: [`REPEAT_FLOOR`], or
/// the threshold itself when it is lower, or 1 (identical texts only).
pub fn repeat_floor(threshold: f32) -> f32 {
    if threshold < 1.0 {
        threshold.min(REPEAT_FLOOR)
    } else {
        threshold
    }
}

/// Longest text (in words) that is aligned; longer texts skip the order and repeat checks
/// (never a repeat, never rejected for order), so the verifier stays within microseconds.
const MAX_WORDS: usize = 96;

/// English function words that are not also common words of other European languages (`a`,
/// `in`, `to`, `do`, `die`, `no` are): one of them, or English function words for a fifth of
/// the words or more, and a text reads as English.
const ENGLISH_MARKERS: &[&str] = &[
    "the", "what", "whats", "how", "hows", "can", "cant", "does", "doesnt", "are", "my", "your",
    "you", "and", "with", "which", "who", "when", "where", "why", "should", "would", "could",
    "there", "this", "that", "from", "have", "did", "our", "their", "they", "been", "into",
    "about", "im", "ive", "dont",
];

/// Names kept per text for the order check (the first ones; bounded work on long prompts).
const MAX_NAMES: usize = 32;

/// Most misspelt words in a repeat: more, and two different real words one letter apart
/// (`price` / `prize`) become likelier than typing slips.
const MAX_MISSPELT: usize = 2;

/// Discourse fillers, greetings and politeness: they never change the question.
const FILLERS: &[&str] = &[
    "hi",
    "hello",
    "hey",
    "hiya",
    "um",
    "umm",
    "uh",
    "er",
    "erm",
    "ah",
    "oh",
    "so",
    "okay",
    "ok",
    "yeah",
    "well",
    "please",
    "pls",
    "plz",
    "thanks",
    "thank",
    "thx",
    "cheers",
    "kindly",
    "actually",
    "basically",
    "just",
];

/// Filler phrases (matched as whole word sequences).
const FILLER_PHRASES: &[&[&str]] = &[
    &["many", "thanks"],
    &["thanks", "in", "advance"],
    &["thank", "you"],
    &["quick", "question"],
    &["could", "you", "tell", "me"],
    &["can", "you", "tell", "me"],
    &["i", "was", "wondering"],
    &["i", "would", "like", "to", "know"],
    &["i", "want", "to", "know"],
    &["do", "you", "know"],
];

/// Articles and auxiliaries: `how do I` and `how can I` ask the same thing.
const IGNORABLE: &[&str] = &[
    "a", "an", "the", "do", "does", "did", "can", "could", "would", "will", "is", "are", "am", "be",
];

/// Contractions written without their apostrophe (the tokenizer drops it).
const CONTRACTIONS: &[(&str, &[&str])] = &[
    ("whats", &["what", "is"]),
    ("wheres", &["where", "is"]),
    ("hows", &["how", "is"]),
    ("whos", &["who", "is"]),
    ("whens", &["when", "is"]),
    ("thats", &["that", "is"]),
    ("theres", &["there", "is"]),
    ("cant", &["can", "not"]),
    ("cannot", &["can", "not"]),
    ("dont", &["do", "not"]),
    ("doesnt", &["does", "not"]),
    ("didnt", &["did", "not"]),
    ("isnt", &["is", "not"]),
    ("arent", &["are", "not"]),
    ("wont", &["will", "not"]),
    ("im", &["i", "am"]),
    ("ive", &["i", "have"]),
    ("id", &["i", "would"]),
    ("ill", &["i", "will"]),
    ("youre", &["you", "are"]),
    ("theyre", &["they", "are"]),
];

/// Words whose `'s` is `is`, `has` or `us` (`what's`, `it's`, `let's`), not a possessive.
const NOT_POSSESSORS: &[&str] = &[
    "what",
    "where",
    "how",
    "who",
    "when",
    "why",
    "it",
    "that",
    "there",
    "here",
    "let",
    "he",
    "she",
    "this",
    "everyone",
    "everything",
    "someone",
    "something",
    "nobody",
    "one",
];

/// Possessive pronouns by grammatical person.
const FIRST_PERSON: &[&str] = &["my", "mine", "our", "ours"];
const THIRD_PERSON: &[&str] = &["his", "her", "hers", "their", "theirs"];

/// Closed sets of mutually exclusive alternatives: a text with one member and a text with a
/// different one ask about different things. Members are compared after plural folding.
const CONTRAST_SETS: &[&[&str]] = &[
    // Direction particles of phrasal verbs and compounds (`check-in`/`check-out`,
    // `opt-in`/`opt-out`, `log in`/`log out`, `sign up`/`sign off`).
    &["in", "out"],
    &["up", "down"],
    // Sex and family roles.
    &["male", "female"],
    &["man", "woman"],
    &["men", "women"],
    &["boy", "girl"],
    &["husband", "wife"],
    &["son", "daughter"],
    &["mother", "father"],
    &["mum", "dad"],
    &["mom", "dad"],
    &["brother", "sister"],
    &["he", "she"],
    &["him", "her"],
    &["his", "her"],
    // Colours.
    &[
        "red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink", "brown",
        "grey", "gray", "silver", "gold",
    ],
    // Meals.
    &["breakfast", "brunch", "lunch", "dinner", "supper"],
    // Frequencies and periods.
    &[
        "hourly",
        "daily",
        "weekly",
        "fortnightly",
        "monthly",
        "quarterly",
        "yearly",
        "annual",
        "annually",
    ],
    // Channels.
    &["online", "offline", "paper", "postal", "in-person"],
    // Sequence and relative position.
    &["next", "previous", "same", "last"],
    &["single", "double", "twin"],
    &[
        "domestic",
        "home",
        "local",
        "international",
        "overseas",
        "foreign",
        "abroad",
    ],
    &["private", "public"],
    &["manual", "automatic"],
    &["full-time", "part-time"],
    &["part", "full"],
    &["front", "back", "rear"],
    &["upstairs", "downstairs"],
    &["inbound", "outbound"],
    &["sender", "recipient", "receiver"],
    &["buyer", "seller"],
    &["landlord", "tenant"],
    &["employer", "employee"],
];

struct Lexicon {
    fillers: HashSet<&'static str>,
    ignorable: HashSet<&'static str>,
    first: HashSet<&'static str>,
    third: HashSet<&'static str>,
    /// Word → indices of the contrast sets it belongs to.
    contrast: HashMap<&'static str, Vec<usize>>,
}

fn lexicon() -> &'static Lexicon {
    static LEXICON: OnceLock<Lexicon> = OnceLock::new();
    LEXICON.get_or_init(|| Lexicon {
        fillers: FILLERS.iter().copied().collect(),
        ignorable: IGNORABLE.iter().copied().collect(),
        first: FIRST_PERSON.iter().copied().collect(),
        third: THIRD_PERSON.iter().copied().collect(),
        contrast: CONTRAST_SETS.iter().enumerate().fold(
            HashMap::new(),
            |mut m: HashMap<&'static str, Vec<usize>>, (i, set)| {
                for w in *set {
                    m.entry(*w).or_default().push(i);
                }
                m
            },
        ),
    })
}

/// One word of a text, as the verifier sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    /// Lowercase, apostrophes removed, plural folded.
    text: String,
    /// Written as a possessor (`colleague's`, `Lloyds'`).
    genitive: bool,
}

/// The verifier's view of one text, computed once per request and once per candidate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text {
    /// Words that carry the question: fillers, articles and auxiliaries removed.
    words: Vec<Word>,
    /// Possessive persons present: bit 0 first, bit 1 third.
    persons: u8,
    /// `self` appears (`self-employed`, `self-assessment`).
    has_self: bool,
    /// Contrast-set memberships: (set index, member).
    contrasts: Vec<(usize, String)>,
    /// Names (capitalised words not starting a sentence, acronyms), lowercase, in order.
    names: Vec<String>,
    /// Reads as English (see [`ENGLISH_MARKERS`]).
    english: bool,
}

impl Text {
    /// Analyses a text.
    pub fn of(text: &str) -> Text {
        Text::of_tokens(&guard::tokens(text), guard::is_shouting(text))
    }

    /// Analyses a text already split by the guard (`shouting`: written all in capitals).
    pub(crate) fn of_tokens(tokens: &[guard::Token<'_>], shouting: bool) -> Text {
        let lex = lexicon();
        let mut raw: Vec<(String, bool)> = Vec::new();
        let mut contrasts = Vec::new();
        let mut persons = 0u8;
        let mut has_self = false;
        let mut names: Vec<String> = Vec::new();
        let (mut function_words, mut all_words, mut marked) = (0usize, 0usize, false);
        for t in tokens {
            let upper = t.raw.chars().filter(|c| c.is_uppercase()).count();
            let capitalised = t.raw.chars().next().is_some_and(char::is_uppercase);
            // All in capitals, case tells nothing: no names.
            if !shouting && (upper >= 2 || (capitalised && !t.sentence_start)) && t.raw != "I" {
                let name = t.raw.to_lowercase();
                if names.len() < MAX_NAMES && !names.contains(&name) {
                    names.push(name);
                }
            }
            let genitive = {
                let r = t.raw.to_lowercase();
                r.strip_suffix("'s")
                    .or_else(|| r.strip_suffix("\u{2019}s"))
                    .is_some_and(|stem| !NOT_POSSESSORS.contains(&stem))
            };
            let lower: String = t
                .raw
                .chars()
                .filter(|c| *c != '\'' && *c != '\u{2019}')
                .flat_map(char::to_lowercase)
                .collect();
            all_words += 1;
            function_words += usize::from(guard::is_stopword(&lower));
            marked |= ENGLISH_MARKERS.contains(&lower.as_str());
            // Contrast sets: the whole word (`check-in` has no entry, `full-time` has), and
            // each part of a hyphenated compound (`check-in` → `in`).
            let whole = guard::fold(&lower);
            let parts: Vec<&str> = lower.split('-').filter(|p| !p.is_empty()).collect();
            let mut member = |w: &str| {
                if let Some((word, sets)) = lex.contrast.get_key_value(w) {
                    contrasts.extend(sets.iter().map(|set| (*set, (*word).to_owned())));
                }
            };
            member(&whole);
            if parts.len() > 1 {
                for p in &parts {
                    member(&guard::fold(p));
                }
            }
            for part in parts {
                if part == "self" {
                    has_self = true;
                }
                if lex.first.contains(part) {
                    persons |= 1;
                }
                if lex.third.contains(part) {
                    persons |= 2;
                }
                match CONTRACTIONS.iter().find(|(c, _)| *c == part) {
                    Some((_, expansion)) if !genitive => {
                        raw.extend(expansion.iter().map(|w| ((*w).to_owned(), false)));
                    }
                    _ => raw.push((part.to_owned(), genitive)),
                }
            }
        }
        contrasts.sort();
        contrasts.dedup();
        // Remove filler phrases, then single fillers and ignorable words.
        let mut keep = vec![true; raw.len()];
        for phrase in FILLER_PHRASES {
            let n = phrase.len();
            let mut i = 0;
            while i + n <= raw.len() {
                if raw[i..i + n]
                    .iter()
                    .zip(phrase.iter())
                    .all(|(w, p)| w.0 == *p)
                {
                    keep[i..i + n].iter_mut().for_each(|k| *k = false);
                    i += n;
                } else {
                    i += 1;
                }
            }
        }
        let words: Vec<Word> = raw
            .into_iter()
            .zip(keep)
            .filter(|((w, _), k)| {
                *k && !lex.fillers.contains(w.as_str()) && !lex.ignorable.contains(w.as_str())
            })
            .map(|((w, genitive), _)| Word {
                text: guard::fold(&w),
                genitive,
            })
            .collect();
        Text {
            words,
            persons,
            has_self,
            contrasts,
            names,
            english: marked || (all_words > 0 && function_words * 5 >= all_words),
        }
    }

    /// Too long to align (see [`MAX_WORDS`]).
    fn long(&self) -> bool {
        self.words.len() > MAX_WORDS
    }

    /// Whether the text reads as English (the English-only rules apply to it).
    pub fn is_english(&self) -> bool {
        self.english
    }
}

/// How a candidate relates to the request, when the verifier does not reject it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// The same question, reworded at most by the edits listed in the module docs: served
    /// down to [`REPEAT_FLOOR`].
    Repeat,
    /// Not a repeat, and no difference the verifier recognises: served at the threshold.
    Similar,
}

/// Whether a lowercase word is a filler or greeting (`um`, `so`, `hey`, `thanks`): never a
/// name, even in capitals (`UM SO HOW DO I...`).
pub fn is_filler(w: &str) -> bool {
    lexicon().fillers.contains(w)
}

/// English words (see `assets/english-words.txt`), loaded once.
fn english_words() -> &'static HashSet<&'static str> {
    static WORDS: OnceLock<HashSet<&'static str>> = OnceLock::new();
    WORDS.get_or_init(|| {
        include_str!("../assets/english-words.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect()
    })
}

/// Whether a lowercase word (or its plural-folded form) is a known English word.
pub fn is_known_word(w: &str) -> bool {
    let words = english_words();
    words.contains(w)
        || words.contains(format!("{w}s").as_str())
        || words.contains(format!("{w}es").as_str())
        || w.strip_suffix('y')
            .is_some_and(|stem| words.contains(format!("{stem}ies").as_str()))
}

/// Whether two words are the same word, allowing a misspelling: one edit (optimal string
/// alignment) in words of five letters or more, two in words of nine or more, same first
/// letter, never between two numbers, and never between two known English words (`desert` /
/// `dessert` are two words, `reqest` / `request` one).
pub fn same_word(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    if is_known_word(a) && is_known_word(b) {
        return false;
    }
    let (la, lb) = (a.chars().count(), b.chars().count());
    let shorter = la.min(lb);
    if shorter < 5 || a.chars().next() != b.chars().next() {
        return false;
    }
    if a.chars().any(|c| c.is_ascii_digit()) || b.chars().any(|c| c.is_ascii_digit()) {
        return false;
    }
    let allowed = if shorter >= 9 { 2 } else { 1 };
    la.abs_diff(lb) <= allowed && strsim::osa_distance(a, b) <= allowed
}

/// Compares a request with a candidate: `Err` names a difference that changes the question.
pub fn relate(a: &Text, b: &Text) -> Result<Relation, GuardReason> {
    if !(a.english && b.english) {
        // Other languages: no English rule applies, nothing is rejected; a repeat needs the
        // same words exactly (case, punctuation and one moved block aside).
        let exact = a.words.len() == b.words.len()
            && !a.long()
            && !b.long()
            && !a.words.is_empty()
            && block_move(&a.words, &b.words) == Some(0);
        return Ok(if exact {
            Relation::Repeat
        } else {
            Relation::Similar
        });
    }
    // Scope: possessors, persons, `self`.
    if a.has_self != b.has_self {
        return Err(GuardReason::Scope);
    }
    let person_shift = |x: u8, y: u8| x == 1 && y == 2;
    if person_shift(a.persons, b.persons) || person_shift(b.persons, a.persons) {
        return Err(GuardReason::Scope);
    }
    for (x, y) in [(a, b), (b, a)] {
        for g in x.words.iter().filter(|w| w.genitive) {
            if !y.words.iter().any(|w| same_word(&w.text, &g.text)) {
                return Err(GuardReason::Scope);
            }
        }
    }
    // Contrast: a member of a set only in one text, another member of it only in the other.
    for (set, member) in &a.contrasts {
        let only_a = !b.contrasts.iter().any(|(s, m)| s == set && m == member);
        if only_a
            && b.contrasts
                .iter()
                .any(|(s, m)| s == set && m != member && !a.contrasts.contains(&(*s, m.clone())))
        {
            return Err(GuardReason::Contrast);
        }
    }
    // Two names in both texts, in opposite orders: their roles are swapped (`leave British
    // Gas for Octopus` / `move from Octopus to British Gas`).
    let shared: Vec<&String> = a.names.iter().filter(|n| b.names.contains(n)).collect();
    let position = |n: &String| b.names.iter().position(|m| m == n);
    if shared.windows(2).any(|w| position(w[0]) > position(w[1])) {
        return Err(GuardReason::Order);
    }
    if a.long() || b.long() || a.words.is_empty() || b.words.is_empty() {
        return Ok(Relation::Similar);
    }
    if a.words.len() != b.words.len() || !same_bag(&a.words, &b.words) {
        return Ok(Relation::Similar);
    }
    // The same words: in the same order, or with one block moved, it is a repeat; any other
    // order changes who does what to whom.
    match block_move(&a.words, &b.words) {
        Some(misspelt) if misspelt <= MAX_MISSPELT => Ok(Relation::Repeat),
        Some(_) => Ok(Relation::Similar),
        None => Err(GuardReason::Order),
    }
}

/// Whether the two word lists hold the same words (each word of `b` matched to an unused equal
/// or misspelt word of `a`, exact matches first).
fn same_bag(a: &[Word], b: &[Word]) -> bool {
    let mut used = vec![false; a.len()];
    b.iter().all(|w| {
        let exact = (0..a.len()).find(|&i| !used[i] && a[i].text == w.text);
        let found =
            exact.or_else(|| (0..a.len()).find(|&i| !used[i] && same_word(&a[i].text, &w.text)));
        found.map(|i| used[i] = true).is_some()
    })
}

/// Most words a moved block may share with the edge of what it jumped over.
const SHARED_EDGE: usize = 6;

/// If `b` is `a` (same length) with at most one contiguous block moved elsewhere (`X Y Z W` →
/// `X Z Y W`), the number of misspelt words; `None` otherwise.
fn block_move(a: &[Word], b: &[Word]) -> Option<usize> {
    let eq = |x: &Word, y: &Word| same_word(&x.text, &y.text);
    let misspelt =
        |x: &[Word], y: &[Word]| x.iter().zip(y).filter(|(x, y)| x.text != y.text).count();
    let n = a.len();
    let prefix = a.iter().zip(b).take_while(|(x, y)| eq(x, y)).count();
    if prefix == n {
        return Some(misspelt(a, b));
    }
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| eq(x, y))
        .count();
    // The moved block may share its first or last words with what it jumped over, so try
    // shorter prefixes and suffixes too, up to SHARED_EDGE words shorter (bounded work).
    for p in (prefix.saturating_sub(SHARED_EDGE)..=prefix).rev() {
        for s in (suffix.saturating_sub(SHARED_EDGE)..=suffix.min(n - p)).rev() {
            let (am, bm) = (&a[p..n - s], &b[p..n - s]);
            let m = am.len();
            for k in 1..m {
                // am = Y Z with |Y| = k; bm must be Z Y.
                let (y, z) = am.split_at(k);
                if bm[..m - k].iter().zip(z).all(|(u, v)| eq(u, v))
                    && bm[m - k..].iter().zip(y).all(|(u, v)| eq(u, v))
                {
                    return Some(
                        misspelt(&a[..p], &b[..p])
                            + misspelt(&a[n - s..], &b[n - s..])
                            + misspelt(z, &bm[..m - k])
                            + misspelt(y, &bm[m - k..]),
                    );
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relate_texts(a: &str, b: &str) -> Result<Relation, GuardReason> {
        let (ta, tb) = (Text::of(a), Text::of(b));
        let r1 = relate(&ta, &tb);
        let r2 = relate(&tb, &ta);
        assert_eq!(r1, r2, "the verifier is symmetric: {a:?} / {b:?}");
        r1
    }

    #[test]
    fn misspellings_are_one_or_two_edits_in_long_words() {
        assert!(same_word("request", "reqest"));
        assert!(same_word("prescription", "perscription"));
        assert!(same_word("station", "staion"));
        assert!(same_word("invoice", "invioce"));
        // Short words, a different first letter, or numbers are never misspellings.
        assert!(!same_word("hire", "fire"));
        assert!(!same_word("now", "not"));
        assert!(!same_word("lower", "power"));
        assert!(!same_word("10000", "10001"));
        assert!(!same_word("austria", "australia"));
        // Two real words one letter apart are two words, not a misspelling.
        assert!(!same_word("desert", "dessert"));
        assert!(!same_word("former", "farmer"));
        assert!(!same_word("prices", "prizes"));
        assert!(is_known_word("request") && !is_known_word("reqest"));
    }

    #[test]
    fn fillers_case_punctuation_and_auxiliaries_make_a_repeat() {
        for (a, b) in [
            (
                "How do I change my delivery address?",
                "how do i change my delivery address",
            ),
            ("Do you ship to Norway?", "DO YOU SHIP TO NORWAY??"),
            ("How do I reset my router?", "How can I reset my router?"),
            (
                "Where is the nearest bike shop?",
                "Where's the nearest bike shop?",
            ),
            (
                "I can't open the attachment",
                "I cannot open the attachment",
            ),
            (
                "How do I descale a coffee machine?",
                "okay so um how do i descale a coffee machine",
            ),
            (
                "How do I export my contacts?",
                "Hi, quick question: how do I export my contacts? Thanks in advance",
            ),
            (
                "How do I register my warranty?",
                "How do I regster my warrenty?",
            ),
        ] {
            assert_eq!(relate_texts(a, b), Ok(Relation::Repeat), "{a} / {b}");
        }
    }

    #[test]
    fn a_moved_block_is_a_repeat() {
        assert_eq!(
            relate_texts(
                "How do I enable subtitles on my television?",
                "On my television, how do I enable subtitles?"
            ),
            Ok(Relation::Repeat)
        );
        assert_eq!(
            relate_texts(
                "Are your drivers fully insured?",
                "Are your drivers insured fully?"
            ),
            Ok(Relation::Repeat)
        );
        assert_eq!(
            relate_texts(
                "Can I bring my dog to the hotel bar?",
                "To the hotel bar, can I bring my dog?"
            ),
            Ok(Relation::Repeat)
        );
        let words = |s: &str| Text::of(s).words;
        assert_eq!(block_move(&words("a b c"), &words("a b c")), Some(0));
        assert_eq!(block_move(&words("w x y z"), &words("y z w x")), Some(0));
        assert_eq!(
            block_move(&words("v w x y z"), &words("v y w x z")),
            Some(0)
        );
        assert_eq!(block_move(&words("x y z"), &words("z y x")), None);
        assert_eq!(block_move(&words("v w x y"), &words("v y x w")), None);
    }

    #[test]
    fn swapped_roles_are_rejected() {
        assert_eq!(
            relate_texts(
                "How long is the train from London to Leeds?",
                "How long is the train from Leeds to London?"
            ),
            Err(GuardReason::Order)
        );
        assert_eq!(
            relate_texts("Convert USD to GBP", "Convert GBP to USD"),
            Err(GuardReason::Order)
        );
        assert_eq!(
            relate_texts(
                "How do I migrate from MySQL to Postgres?",
                "How do I migrate from Postgres to MySQL?"
            ),
            Err(GuardReason::Order)
        );
        // Prepositions are kept: `to` and `from` differ, so this is not a repeat.
        assert_eq!(
            relate_texts(
                "How do I move money to savings?",
                "How do I move money from savings?"
            ),
            Ok(Relation::Similar)
        );
    }

    #[test]
    fn names_in_opposite_orders_are_rejected() {
        assert_eq!(
            relate_texts(
                "Is there an exit fee for leaving Acme Power for Volta?",
                "If I move from Volta over to Acme Power, will I be charged?"
            ),
            Err(GuardReason::Order)
        );
        assert_eq!(
            relate_texts(
                "How long from Bristol to Bath by train?",
                "What's the train journey time between Bristol and Bath?"
            ),
            Ok(Relation::Similar)
        );
    }

    #[test]
    fn a_change_of_possessor_or_person_is_rejected() {
        assert_eq!(
            relate_texts(
                "How do I change my email address?",
                "How do I change my manager's email address?"
            ),
            Err(GuardReason::Scope)
        );
        assert_eq!(
            relate_texts(
                "How do I change my email address?",
                "How do I change her email address?"
            ),
            Err(GuardReason::Scope)
        );
        assert_eq!(
            relate_texts(
                "What expenses can I deduct if I'm employed?",
                "What expenses can I deduct if I'm self-employed?"
            ),
            Err(GuardReason::Scope)
        );
        // The possessor written without its apostrophe is still the same word.
        assert_eq!(
            relate_texts(
                "Where can I see my daughter's school report?",
                "so where can i see my daughters school report"
            ),
            Ok(Relation::Repeat)
        );
        // `my` and no possessive at all: not a change of person.
        assert_eq!(
            relate_texts(
                "How can I cancel my gym membership?",
                "How do I cancel a gym membership?"
            ),
            Ok(Relation::Similar)
        );
    }

    #[test]
    fn members_of_a_closed_set_are_rejected() {
        for (a, b) in [
            (
                "What time is check-in at the hostel?",
                "What time is check-out at the hostel?",
            ),
            ("How do I opt in to emails?", "How do I opt out of emails?"),
            (
                "Do you have the shirt in red?",
                "Do you have the shirt in blue?",
            ),
            ("Is breakfast included?", "Is dinner included?"),
            (
                "What are the rates for male drivers?",
                "What are the rates for female drivers?",
            ),
            (
                "How much is the weekly pass?",
                "How much is the monthly pass?",
            ),
            (
                "Can I submit an online application?",
                "Can I submit a paper application?",
            ),
            (
                "Do you offer same-day delivery?",
                "Do you offer next-day delivery?",
            ),
        ] {
            assert_eq!(relate_texts(a, b), Err(GuardReason::Contrast), "{a} / {b}");
        }
        // Both members in both texts, or a member in one text only: no contrast.
        assert_eq!(
            relate_texts("Is breakfast included?", "Do you serve breakfast?"),
            Ok(Relation::Similar)
        );
    }

    #[test]
    fn other_languages_are_left_alone() {
        // Swapped words, a swapped possessor-like form, misspellings: never rejected, and a
        // misspelling is not a repeat.
        assert_eq!(
            relate_texts(
                "Wie fahre ich von Berlin nach Hamburg?",
                "Wie fahre ich von Hamburg nach Berlin?"
            ),
            Ok(Relation::Similar)
        );
        assert_eq!(
            relate_texts(
                "Comment annuler ma commande ?",
                "Comment anuler ma commande ?"
            ),
            Ok(Relation::Similar)
        );
        assert!(!Text::of("Comment annuler ma commande ?").is_english());
        assert!(Text::of("Convert USD to GBP").is_english());
        assert_eq!(
            relate_texts(
                "Wie kann ich mein Passwort zurücksetzen?",
                "Wie setze ich mein Passwort zurück?"
            ),
            Ok(Relation::Similar)
        );
        assert_eq!(
            relate_texts(
                "Comment annuler ma commande ?",
                "comment annuler ma commande"
            ),
            Ok(Relation::Repeat)
        );
    }
}

//! The near-miss guard: a cheap lexical check run on every candidate that passed the similarity
//! threshold, rejecting the traps cosine similarity cannot separate.
//!
//! Embeddings place "Is the clinic open on Sundays?" and "Is the clinic closed on Sundays?",
//! or "a 2-bedroom flat" and "a 3-bedroom flat", very close together: the sentences share almost
//! every token. The guard compares features of the two texts whose difference changes the
//! answer, and rejects the candidate when any differ:
//!
//! * **numbers**: digit runs (`2`, `16`, `1,000` = `1000`, the `2` of `2FA`) and number words
//!   (`two` = `2`, `first` = `1`, `twice` = `2`);
//! * **negation and polarity**: whether the text is negated (`not`, `no`, `never`, `without`,
//!   `n't`, ...), a word that is the negated form of a word in the other text (`unsafe`/`safe`,
//!   `unsubscribe`/`subscribe`, `disadvantages`/`advantages`), and a short list of antonym
//!   pairs (`open`/`closed`, `on`/`off`, `allowed`/`banned`, `enable`/`disable`, ...);
//! * **named entities and dates**: capitalised words that do not start a sentence, acronyms,
//!   weekday and month names, relative days (`today`, `tomorrow`, `weekend`). An entity of one
//!   text must appear (in any case) in the other: `Camden`/`Brixton` differ, `Fahrenheit`/
//!   `fahrenheit` or an all-caps retyping do not.
//!
//! Optionally ([`GuardConfig::word_swap`]) it also rejects two texts that differ by exactly one
//! content word that is not a spelling variant ("home insurance" / "car insurance").
//!
//! The guard is symmetric, allocation-light and runs in a few microseconds; it never makes a
//! miss into a hit. It is English-centric: in other languages only numbers, capitalised names
//! and acronyms are compared. The benchmark (`cargo xtask bench semantic`) measures what it
//! gains and costs (docs/benchmarks.md).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::OnceLock;

use crate::verify;
pub use crate::verify::Relation;

/// Which checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuardConfig {
    /// Master switch (`semantic_guard: false` turns the guard off).
    pub enabled: bool,
    /// Also reject texts that differ by one substituted content word (`semantic_guard: strict`).
    pub word_swap: bool,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            enabled: true,
            word_swap: false,
        }
    }
}

impl GuardConfig {
    /// The guard switched off.
    pub fn off() -> Self {
        GuardConfig {
            enabled: false,
            word_swap: false,
        }
    }

    /// The guard with the word-swap check too.
    pub fn strict() -> Self {
        GuardConfig {
            enabled: true,
            word_swap: true,
        }
    }
}

/// Why the guard rejected a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum GuardReason {
    /// Different numbers.
    Numbers,
    /// One text is negated and the other is not, or a word is negated/reversed.
    Negation,
    /// Different named entities, dates or days.
    Entities,
    /// One substituted content word.
    WordSwap,
    /// The same words in an order that swaps their roles (the verifier).
    Order,
    /// A different possessor or person, or `self-` (the verifier).
    Scope,
    /// Two members of one closed set of alternatives (the verifier).
    Contrast,
}

impl GuardReason {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardReason::Numbers => "numbers",
            GuardReason::Negation => "negation",
            GuardReason::Entities => "entities",
            GuardReason::WordSwap => "word-swap",
            GuardReason::Order => "order",
            GuardReason::Scope => "scope",
            GuardReason::Contrast => "contrast",
        }
    }
}

/// The guard's view of one text, computed once per request and compared with each candidate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    numbers: BTreeSet<String>,
    negated: bool,
    words: BTreeSet<String>,
    entities: BTreeSet<String>,
    content: Vec<String>,
    /// Per content word: whether it stands where a verb stands (see [`verb_position`]).
    verb_slot: Vec<bool>,
    text: verify::Text,
}

const NEGATIONS: &[&str] = &[
    "not", "no", "non", "never", "without", "none", "nobody", "nothing", "nowhere", "neither",
    "nor", "avoid", "cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt",
    "werent", "wont", "wouldnt", "shouldnt", "couldnt", "hasnt", "havent", "hadnt", "mustnt",
    "neednt", "aint",
];

/// Antonym pairs whose swap reverses the question (compared on the words present in only one
/// of the two texts, after plural folding).
const ANTONYMS: &[(&str, &str)] = &[
    ("open", "closed"),
    ("open", "close"),
    ("opened", "closed"),
    ("on", "off"),
    ("allowed", "banned"),
    ("allowed", "forbidden"),
    ("allowed", "prohibited"),
    ("allow", "ban"),
    ("allow", "forbid"),
    ("allow", "deny"),
    ("permitted", "banned"),
    ("permitted", "forbidden"),
    ("enable", "disable"),
    ("enabled", "disabled"),
    ("activate", "deactivate"),
    ("include", "exclude"),
    ("included", "excluded"),
    ("including", "excluding"),
    ("increase", "decrease"),
    ("increase", "reduce"),
    ("raise", "lower"),
    ("more", "less"),
    ("more", "fewer"),
    ("most", "least"),
    ("max", "min"),
    ("maximum", "minimum"),
    ("highest", "lowest"),
    ("high", "low"),
    ("best", "worst"),
    ("better", "worse"),
    ("cheapest", "expensive"),
    ("benefit", "drawback"),
    ("advantage", "drawback"),
    ("pro", "con"),
    ("positive", "negative"),
    ("before", "after"),
    ("early", "late"),
    ("earliest", "latest"),
    ("first", "last"),
    ("start", "stop"),
    ("start", "end"),
    ("begin", "end"),
    ("add", "remove"),
    ("add", "delete"),
    ("buy", "sell"),
    ("import", "export"),
    ("upload", "download"),
    ("login", "logout"),
    ("sign", "unsign"),
    ("accept", "reject"),
    ("pass", "fail"),
    ("succeed", "fail"),
    ("compulsory", "optional"),
    ("mandatory", "optional"),
    ("required", "optional"),
    ("grant", "revoke"),
    ("approve", "deny"),
    ("approve", "decline"),
    ("deposit", "withdraw"),
    ("add", "withdraw"),
    ("allow", "block"),
    ("include", "omit"),
    ("before", "since"),
    ("accept", "decline"),
    ("approve", "reject"),
    ("true", "false"),
    ("yes", "no"),
    ("hot", "cold"),
    ("above", "below"),
    ("over", "under"),
    ("inside", "outside"),
    ("internal", "external"),
    ("join", "leave"),
    ("lock", "unlock"),
    ("win", "lose"),
    ("gain", "loss"),
    ("profit", "loss"),
    ("safe", "dangerous"),
    ("legal", "illegal"),
    ("easy", "hard"),
    ("easy", "difficult"),
    ("fast", "slow"),
    ("big", "small"),
    ("large", "small"),
    ("long", "short"),
    ("old", "new"),
    ("old", "young"),
    ("arrive", "depart"),
    ("arrival", "departure"),
    ("incoming", "outgoing"),
    ("inbound", "outbound"),
    ("increase", "cut"),
    ("wet", "dry"),
    ("full", "empty"),
    ("light", "dark"),
    ("light", "heavy"),
    ("top", "bottom"),
    ("left", "right"),
    ("north", "south"),
    ("east", "west"),
];

/// Prefixes that negate the word they are glued to (`unsafe`, `disallow`, `non-refundable`).
const NEGATING_PREFIXES: &[&str] = &["un", "dis", "in", "im", "il", "ir", "non", "de", "anti"];

const NUMBER_WORDS: &[(&str, &str)] = &[
    ("zero", "0"),
    ("first", "1"),
    ("two", "2"),
    ("twice", "2"),
    ("second", "2"),
    ("three", "3"),
    ("third", "3"),
    ("thrice", "3"),
    ("triple", "3"),
    ("four", "4"),
    ("fourth", "4"),
    ("five", "5"),
    ("fifth", "5"),
    ("six", "6"),
    ("sixth", "6"),
    ("seven", "7"),
    ("seventh", "7"),
    ("eight", "8"),
    ("eighth", "8"),
    ("nine", "9"),
    ("ninth", "9"),
    ("ten", "10"),
    ("tenth", "10"),
    ("eleven", "11"),
    ("twelve", "12"),
    ("dozen", "12"),
    ("thirteen", "13"),
    ("fourteen", "14"),
    ("fifteen", "15"),
    ("sixteen", "16"),
    ("seventeen", "17"),
    ("eighteen", "18"),
    ("nineteen", "19"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("forty", "40"),
    ("fifty", "50"),
    ("sixty", "60"),
    ("seventy", "70"),
    ("eighty", "80"),
    ("ninety", "90"),
    ("hundred", "100"),
    ("thousand", "1000"),
    ("million", "1000000"),
    ("billion", "1000000000"),
];

/// Weekdays, months and relative days: compared like named entities even when lowercase.
const TIME_WORDS: &[&str] = &[
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "weekday",
    "weekend",
    "january",
    "february",
    "march",
    "april",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "today",
    "tonight",
    "tomorrow",
    "yesterday",
    "morning",
    "afternoon",
    "evening",
    "night",
    "spring",
    "summer",
    "autumn",
    "winter",
    "christmas",
    "easter",
];

/// Capitalised words that are not names: the pronoun `I` and its contractions (greetings and
/// fillers are never names either: [`verify::is_filler`]).
const NOT_ENTITIES: &[&str] = &["i", "id", "im", "ive", "ill"];

/// Function words: ignored by the word-swap check.
const STOPWORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "if", "of", "to", "in", "on", "at", "by", "for", "with",
    "from", "into", "about", "as", "is", "are", "was", "were", "be", "been", "being", "am", "do",
    "does", "did", "done", "have", "has", "had", "i", "me", "my", "mine", "you", "your", "yours",
    "we", "our", "us", "they", "their", "them", "it", "its", "this", "that", "these", "those",
    "what", "whats", "which", "who", "whom", "whose", "when", "where", "why", "how", "can",
    "could", "would", "should", "will", "shall", "may", "might", "must", "there", "here", "so",
    "some", "any", "get", "please", "id", "im", "ive", "like", "want", "need", "know", "tell",
    "there", "just", "also", "too", "very", "way", "up", "out", "much", "many",
];

/// The word lists as hash sets, built once.
struct Lexicon {
    negations: HashSet<&'static str>,
    numbers: HashMap<&'static str, &'static str>,
    time: HashSet<&'static str>,
    not_entities: HashSet<&'static str>,
    stopwords: HashSet<&'static str>,
    antonyms: HashSet<(&'static str, &'static str)>,
}

fn lexicon() -> &'static Lexicon {
    static LEXICON: OnceLock<Lexicon> = OnceLock::new();
    LEXICON.get_or_init(|| Lexicon {
        negations: NEGATIONS.iter().copied().collect(),
        numbers: NUMBER_WORDS.iter().copied().collect(),
        time: TIME_WORDS.iter().copied().collect(),
        not_entities: NOT_ENTITIES.iter().copied().collect(),
        stopwords: STOPWORDS.iter().copied().collect(),
        antonyms: ANTONYMS
            .iter()
            .flat_map(|&(a, b)| [(a, b), (b, a)])
            .collect(),
    })
}

/// Whether a lowercase word is an English function word (the word-swap check ignores them;
/// the verifier counts them to tell English from other languages).
pub(crate) fn is_stopword(w: &str) -> bool {
    lexicon().stopwords.contains(w)
}

/// Whether a text is written all in capitals (letters, but no lowercase one).
pub(crate) fn is_shouting(text: &str) -> bool {
    !text.chars().any(char::is_lowercase) && text.chars().any(char::is_uppercase)
}

fn is_negation(w: &str) -> bool {
    lexicon().negations.contains(w)
}

fn number_word(w: &str) -> Option<&'static str> {
    lexicon().numbers.get(w).copied()
}

/// Folds simple English plurals so `weekends`/`weekend` and `drawbacks`/`drawback` compare
/// equal; never shortens words of three letters or fewer.
pub(crate) fn fold(w: &str) -> String {
    if w.len() > 4 && w.ends_with("ies") {
        return format!("{}y", &w[..w.len() - 3]);
    }
    if w.len() > 3 && w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us") {
        return w[..w.len() - 1].to_owned();
    }
    w.to_owned()
}

pub(crate) struct Token<'a> {
    pub(crate) raw: &'a str,
    pub(crate) sentence_start: bool,
}

/// Splits into word tokens (letters, digits, inner apostrophes and commas between digits).
pub(crate) fn tokens(text: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut sentence_start = true;
    let mut next_starts = true;
    let bytes: Vec<(usize, char)> = text.char_indices().collect();
    for (i, &(pos, c)) in bytes.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| bytes[j].1);
        let next = bytes.get(i + 1).map(|x| x.1);
        let inner = match c {
            '\'' | '\u{2019}' => {
                prev.is_some_and(char::is_alphanumeric) && next.is_some_and(char::is_alphanumeric)
            }
            ',' | '.' => {
                prev.is_some_and(|p| p.is_ascii_digit()) && next.is_some_and(|n| n.is_ascii_digit())
            }
            _ => c.is_alphanumeric(),
        };
        if inner {
            if start.is_none() {
                start = Some(pos);
                sentence_start = next_starts;
                next_starts = false;
            }
        } else {
            if let Some(s) = start.take() {
                out.push(Token {
                    raw: &text[s..pos],
                    sentence_start,
                });
            }
            if matches!(c, '.' | '?' | '!' | ':' | ';' | '\n' | '"' | '(' | '[') {
                next_starts = true;
            }
        }
    }
    if let Some(s) = start {
        out.push(Token {
            raw: &text[s..],
            sentence_start,
        });
    }
    out
}

fn normalise_number(digits: &str) -> String {
    let cleaned: String = digits.chars().filter(|c| *c != ',').collect();
    let trimmed = cleaned.trim_start_matches('0');
    if trimmed.is_empty() || trimmed.starts_with('.') {
        format!("0{trimmed}")
    } else {
        trimmed.to_owned()
    }
}

impl Features {
    /// Extracts the features of a text.
    pub fn of(text: &str) -> Features {
        let lex = lexicon();
        let mut f = Features::default();
        let mut negations = 0usize;
        let mut previous: Option<String> = None;
        let shouting = is_shouting(text);
        let tokens = tokens(text);
        for t in &tokens {
            let lower: String = t
                .raw
                .chars()
                .filter(|c| *c != '\'' && *c != '\u{2019}')
                .flat_map(char::to_lowercase)
                .collect();
            // Numbers: every digit run inside the token (`2FA` → 2, `6-year-old` → 6).
            let mut has_digit = false;
            let mut run = String::new();
            for c in t.raw.chars() {
                if c.is_ascii_digit() || (!run.is_empty() && (c == ',' || c == '.')) {
                    run.push(c);
                    has_digit |= c.is_ascii_digit();
                } else if !run.is_empty() {
                    f.numbers
                        .insert(normalise_number(run.trim_end_matches([',', '.'])));
                    run.clear();
                }
            }
            if !run.is_empty() {
                f.numbers
                    .insert(normalise_number(run.trim_end_matches([',', '.'])));
            }
            if !has_digit && let Some(n) = number_word(&lower) {
                f.numbers.insert(n.to_owned());
            }
            if is_negation(&lower) {
                negations += 1;
            }
            // Entities: capitalised words not at a sentence start, acronyms, time words.
            let first_upper = t.raw.chars().next().is_some_and(char::is_uppercase);
            let upper_count = t.raw.chars().filter(|c| c.is_uppercase()).count();
            // In a text written all in capitals only short words that are not function words
            // can be told for acronyms (`USD`, `NHS`; not `QUESTION` or `IN`).
            let is_acronym = upper_count >= 2
                && !has_digit
                && (!shouting || (lower.len() <= 4 && !lex.stopwords.contains(lower.as_str())));
            let folded = fold(&lower);
            if lex.time.contains(folded.as_str())
                || (!has_digit
                    && !lex.not_entities.contains(lower.as_str())
                    && !verify::is_filler(&lower)
                    && (is_acronym || (first_upper && !t.sentence_start && !shouting)))
            {
                f.entities.insert(folded.clone());
            }
            if !has_digit && !lex.stopwords.contains(lower.as_str()) && !is_negation(&lower) {
                f.content.push(folded.clone());
                f.verb_slot.push(verb_position(previous.as_deref()));
            }
            previous = Some(lower.clone());
            f.words.insert(folded);
        }
        f.negated = negations > 0;
        f.text = verify::Text::of_tokens(&tokens, shouting);
        f
    }

    /// Compares with a candidate's features: `Err` names the first difference found; `Ok`
    /// says whether the candidate is a repeat of the request ([`Relation::Repeat`], served
    /// below the threshold) or only similar. With the guard off every candidate is similar.
    pub fn compare(&self, other: &Features, config: GuardConfig) -> Result<Relation, GuardReason> {
        if !config.enabled {
            return Ok(Relation::Similar);
        }
        if self.numbers != other.numbers {
            return Err(GuardReason::Numbers);
        }
        if self.negated != other.negated || polarity_flip(&self.words, &other.words) {
            return Err(GuardReason::Negation);
        }
        // An entity of one text must be a word of the other (case-insensitive): a name that
        // is swapped or added counts, a different capitalisation (`WHAT ARE...`, `fahrenheit`)
        // does not.
        if !entities_match(self, other) || !entities_match(other, self) {
            return Err(GuardReason::Entities);
        }
        let relation = verify::relate(&self.text, &other.text)?;
        if relation == Relation::Similar
            && let Some(i) = one_word_swapped(&self.content, &other.content)
            && (config.word_swap
                || (self.text.is_english()
                    && other.text.is_english()
                    && !(self.verb_slot[i] && other.verb_slot[i])))
        {
            return Err(GuardReason::WordSwap);
        }
        Ok(relation)
    }
}

/// Whether every entity of `a` is a word of `b`. `today` and `tonight` name the default
/// time of a question, so they may be missing from a text that names no time at all ("What time
/// is the last train?" / "When's the last train tonight?").
fn entities_match(a: &Features, b: &Features) -> bool {
    let lex = lexicon();
    let b_has_time = b.entities.iter().any(|e| lex.time.contains(e.as_str()));
    a.entities
        .iter()
        .all(|e| b.words.contains(e) || (!b_has_time && matches!(e.as_str(), "today" | "tonight")))
}

/// Checks two texts (convenience for [`Features::of`] + [`Features::compare`]).
pub fn check(request: &str, candidate: &str, config: GuardConfig) -> Result<Relation, GuardReason> {
    Features::of(request).compare(&Features::of(candidate), config)
}

fn polarity_flip(a: &BTreeSet<String>, b: &BTreeSet<String>) -> bool {
    let only_a: Vec<&String> = a.difference(b).collect();
    let only_b: Vec<&String> = b.difference(a).collect();
    if only_a.is_empty() && only_b.is_empty() {
        return false;
    }
    let negates = |x: &str, y: &str| {
        NEGATING_PREFIXES.iter().any(|p| {
            x.strip_prefix(p)
                .is_some_and(|rest| rest.len() >= 3 && (rest == y || fold(rest) == y))
        })
    };
    for x in &only_a {
        for y in &only_b {
            let (x, y) = (x.as_str(), y.as_str());
            if negates(x, y) || negates(y, x) {
                return true;
            }
            if base_forms(x).any(|x| base_forms(y).any(|y| lexicon().antonyms.contains(&(x, y)))) {
                return true;
            }
        }
    }
    false
}

/// A word and the stems its regular inflections leave (`approved` → `approve`, `approv`;
/// `rejected` → `reject`; `closing` → `clos`, `close`), so one antonym pair covers its forms.
fn base_forms(w: &str) -> impl Iterator<Item = &str> {
    let ed = w.strip_suffix("ed").filter(|s| s.len() >= 3);
    let d = w
        .strip_suffix('d')
        .filter(|_| w.ends_with("ed") && w.len() >= 5);
    let ing = w.strip_suffix("ing").filter(|s| s.len() >= 3);
    std::iter::once(w).chain(ed).chain(d).chain(ing)
}

/// Whether the content words differ by exactly one substitution that is not a spelling variant:
/// where the substituted span starts (the same position in both, everything before it kept).
fn one_word_swapped(a: &[String], b: &[String]) -> Option<usize> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    // A substitution keeps every other content word in its place: one span of one or two
    // words differs (`home`/`car` insurance, `pad thai`/`green curry`, `flight`/`package
    // holiday` booking); a pure insertion is not a substitution.
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    // Nothing kept is a rewording, not a substitution.
    if ma.is_empty() || mb.is_empty() || ma.len() > 2 || mb.len() > 2 || prefix + suffix == 0 {
        return None;
    }
    if ma.iter().any(|w| b.contains(w)) || mb.iter().any(|w| a.contains(w)) {
        return None;
    }
    if ma.len() == 1 && mb.len() == 1 {
        let (x, y) = (&ma[0], &mb[0]);
        let (lx, ly) = (x.chars().count(), y.chars().count());
        // A spelling variant (Damerau-Levenshtein, optimal string alignment) or another form
        // of the same stem (`agent`/`agency`, `form`/`formation`) is not a swap.
        let allowed = (lx.max(ly) / 4).max(1);
        let common = x.chars().zip(y.chars()).take_while(|(p, q)| p == q).count();
        let same_stem = common >= 4 && common + 2 >= lx.min(ly);
        let misspelt = strsim::osa_distance(x, y) <= allowed
            && !(verify::is_known_word(x) && verify::is_known_word(y));
        if misspelt || same_stem {
            return None;
        }
    }
    Some(prefix)
}

/// Words after which English puts a verb: subject pronouns, modals and auxiliaries, the
/// infinitive `to`; the first word of an imperative. A substituted verb usually rewords the
/// question (`update`/`change` my address); a substituted noun or adjective changes what it is
/// about (`home`/`car` insurance), so only the latter is rejected by default.
fn verb_position(previous: Option<&str>) -> bool {
    previous.is_none_or(|p| {
        matches!(
            p,
            "i" | "you"
                | "be"
                | "we"
                | "they"
                | "he"
                | "she"
                | "to"
                | "can"
                | "could"
                | "do"
                | "does"
                | "did"
                | "will"
                | "would"
                | "should"
                | "shall"
                | "must"
                | "may"
                | "might"
                | "please"
                | "cant"
                | "dont"
                | "wont"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejects(a: &str, b: &str) -> Option<GuardReason> {
        let r1 = check(a, b, GuardConfig::default()).err();
        let r2 = check(b, a, GuardConfig::default()).err();
        assert_eq!(r1, r2, "the guard is symmetric: {a:?} / {b:?}");
        r1
    }

    #[test]
    fn numbers_differ() {
        assert_eq!(
            rejects(
                "Is a 2-bedroom flat available?",
                "Is a 3-bedroom flat available?"
            ),
            Some(GuardReason::Numbers)
        );
        assert_eq!(
            rejects("Convert 100 USD to GBP", "Convert 1,000 USD to GBP"),
            Some(GuardReason::Numbers)
        );
        assert_eq!(
            rejects("after one year", "after 5 years"),
            Some(GuardReason::Numbers)
        );
        assert_eq!(rejects("after 2 years", "after two years"), None);
        // `once` is a conjunction as often as a count: not a number.
        assert_eq!(
            rejects(
                "How much leave do I get after 3 years?",
                "What's my leave once I've worked here for three years?"
            ),
            None
        );
        assert_eq!(
            rejects("Take it once a day", "Take it twice a day"),
            Some(GuardReason::Numbers)
        );
        assert_eq!(rejects("Convert 1,000 USD", "Convert 1000 USD"), None);
        assert_eq!(
            rejects("How do I turn on two-factor auth?", "How can I set up 2FA?"),
            None
        );
    }

    #[test]
    fn negations_differ() {
        assert_eq!(
            rejects(
                "What's included in the price?",
                "What's not included in the price?"
            ),
            Some(GuardReason::Negation)
        );
        assert_eq!(
            rejects(
                "Is ibuprofen safe with alcohol?",
                "Is ibuprofen unsafe with alcohol?"
            ),
            Some(GuardReason::Negation)
        );
        assert_eq!(
            rejects("How do I subscribe?", "How do I unsubscribe?"),
            Some(GuardReason::Negation)
        );
        assert_eq!(
            rejects(
                "Is the clinic open on Sundays?",
                "Is the clinic closed on Sundays?"
            ),
            Some(GuardReason::Negation)
        );
        assert_eq!(
            rejects("Why doesn't it start?", "Why does it start?"),
            Some(GuardReason::Negation)
        );
        assert_eq!(
            rejects("Why doesn't it start?", "Why won't it start?"),
            None
        );
        assert_eq!(rejects("I can't log in", "I cannot log in"), None);
    }

    #[test]
    fn entities_differ() {
        assert_eq!(
            rejects(
                "What are the opening hours of the Camden branch?",
                "What are the opening hours of the Brixton branch?"
            ),
            Some(GuardReason::Entities)
        );
        assert_eq!(
            rejects("Who is the CEO of Microsoft?", "Who is the CEO of Apple?"),
            Some(GuardReason::Entities)
        );
        assert_eq!(
            rejects("Are you open on Saturday?", "Are you open on sunday?"),
            Some(GuardReason::Entities)
        );
        assert_eq!(
            rejects("drinking age in the UK?", "drinking age in the US?"),
            Some(GuardReason::Entities)
        );
        assert_eq!(
            rejects("Can I pay with PayPal?", "Do you accept PayPal?"),
            None
        );
        assert_eq!(
            rejects(
                "Do you deliver on weekends?",
                "Is weekend delivery available?"
            ),
            None
        );
        // Today is the default time of a question; another day is not.
        assert_eq!(
            rejects(
                "What time does the last ferry leave?",
                "When does the last ferry leave tonight?"
            ),
            None
        );
        assert_eq!(
            rejects(
                "When does the last ferry leave tomorrow?",
                "When does the last ferry leave tonight?"
            ),
            Some(GuardReason::Entities)
        );
        assert_eq!(
            rejects(
                "What time does the last ferry leave?",
                "When does the last ferry leave on Sunday?"
            ),
            Some(GuardReason::Entities)
        );
        // A filler, or a long word, in capitals is not an acronym.
        assert_eq!(
            rejects("How do I book a table?", "UM SO HOW DO I BOOK A TABLE"),
            None
        );
        assert_eq!(
            rejects(
                "How do I book a table?",
                "HEY, QUICK QUESTION: HOW DO I BOOK A TABLE"
            ),
            None
        );
        assert_eq!(
            rejects("CONVERT 100 USD TO GBP", "Convert 100 EUR to GBP"),
            Some(GuardReason::Entities)
        );
        // A capitalised first word is not an entity.
        assert_eq!(
            rejects("Where is my order?", "Tell me where my order is"),
            None
        );
    }

    #[test]
    fn typos_and_paraphrases_pass() {
        for (a, b) in [
            (
                "Can I get a copy of my bank statement by post?",
                "Can I get a copy of my bank statment by post?",
            ),
            (
                "How do I cancel my subscription?",
                "I'd like to end my subscription, how do I do that?",
            ),
            (
                "How much does delivery cost?",
                "What are your shipping fees?",
            ),
        ] {
            assert_eq!(rejects(a, b), None, "{a} / {b}");
        }
    }

    #[test]
    fn a_swapped_noun_is_rejected_a_swapped_verb_only_when_strict() {
        // The object of the question changes: rejected by default.
        for (a, b) in [
            (
                "What does my pet insurance cover?",
                "What does my travel insurance cover?",
            ),
            (
                "Do you offer discounts for teachers?",
                "Do you offer discounts for nurses?",
            ),
            (
                "Does the chicken tikka contain nuts?",
                "Does the vegetable korma contain nuts?",
            ),
            (
                "Can I change my hotel booking?",
                "Can I change my car hire booking?",
            ),
        ] {
            assert_eq!(rejects(a, b), Some(GuardReason::WordSwap), "{a} / {b}");
        }
        // The verb changes: a rewording, rejected only by the strict guard.
        let (a, b) = ("How do I update my address?", "How do I change my address?");
        assert_eq!(check(a, b, GuardConfig::default()), Ok(Relation::Similar));
        assert_eq!(
            check(a, b, GuardConfig::strict()),
            Err(GuardReason::WordSwap)
        );
        // Another form of the same stem, or a word moved rather than replaced, is no swap.
        assert_eq!(
            rejects(
                "Who do I call at my insurance agent?",
                "Who do I call at my insurance agency?"
            ),
            None
        );
        assert_eq!(
            rejects(
                "What's Tom's email address?",
                "What address can I email Tom at?"
            ),
            None
        );
        // Two real words a letter apart are a swap, not a misspelling.
        assert_eq!(
            rejects(
                "Which dessert is best in summer?",
                "Which desert is best in summer?"
            ),
            Some(GuardReason::WordSwap)
        );
        // An added word is not a swap.
        assert_eq!(
            rejects(
                "What's the minimum spend for free shipping?",
                "What's the minimum spend amount for free shipping?"
            ),
            None
        );
        // A typo is not a swap, even for the strict guard; it is a repeat.
        assert_eq!(
            check(
                "How do I register my warranty?",
                "How do I regster my warranty?",
                GuardConfig::strict()
            ),
            Ok(Relation::Repeat)
        );
        assert_eq!(check(a, b, GuardConfig::off()), Ok(Relation::Similar));
        // Other languages: a substituted word is not rejected by default (no more than before).
        assert_eq!(
            rejects("¿Cómo cambio mi contraseña?", "¿Cómo cambio mi clave?"),
            None
        );
    }

    #[test]
    fn inflected_antonyms_and_avoid_are_polarity() {
        assert_eq!(
            rejects(
                "What happens if my visa is approved?",
                "What happens if my visa is rejected?"
            ),
            Some(GuardReason::Negation)
        );
        assert_eq!(
            rejects(
                "Are the workshops compulsory?",
                "Are the workshops optional?"
            ),
            Some(GuardReason::Negation)
        );
        assert_eq!(
            rejects(
                "Which foods can I eat while breastfeeding?",
                "Which foods should I avoid while breastfeeding?"
            ),
            Some(GuardReason::Negation)
        );
        assert_eq!(
            base_forms("approved").collect::<Vec<_>>(),
            ["approved", "approv", "approve"]
        );
    }
}

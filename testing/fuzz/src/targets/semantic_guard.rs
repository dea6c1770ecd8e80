//! `semantic_guard`: the semantic guard and verifier (`guard::check`), on hostile text and on
//! generated question pairs whose relation is known by construction.
//!
//! Properties: no panic on any text; the verdict is symmetric; a pair that swaps two places
//! around `to`, adds a possessor, changes a number or negates the question is never served; the
//! same question retyped (case, punctuation, a greeting or a filler) is a repeat.

use llm_cache::semantic::guard::{self, GuardConfig, Relation};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use crate::strategies;

/// How the second text is made from the first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Variant {
    /// The same question retyped: lowercase or uppercase, without punctuation, with a greeting
    /// before and a filler after (indices into the lists below).
    Retyped {
        /// 0 as is, 1 lowercase, 2 uppercase.
        case: u8,
        /// Drop the question mark.
        bare: bool,
        /// Greeting put in front (index, 0 = none).
        greeting: usize,
        /// Filler put at the end (index, 0 = none).
        filler: usize,
    },
    /// The two places swapped.
    SwapPlaces,
    /// A possessor put before the object.
    Possessor(usize),
    /// Another number.
    Number(u32),
    /// The question negated.
    Negated,
}

/// A case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// Two arbitrary texts.
    Text(String, String),
    /// A generated question and a variant of it.
    Pair {
        /// Indices into the word lists (verb, object, place, place, vehicle).
        slots: [usize; 5],
        /// A number in the question.
        number: u32,
        /// The variant.
        variant: Variant,
    },
}

const VERBS: &[&str] = &[
    "renew", "cancel", "change", "transfer", "upgrade", "export", "reset", "replace",
];
const OBJECTS: &[&str] = &[
    "parking permit",
    "gym membership",
    "phone contract",
    "library card",
    "broadband plan",
    "travel insurance",
    "pension",
    "savings account",
];
const PLACES: &[&str] = &[
    "London", "Leeds", "Bristol", "Cardiff", "Glasgow", "York", "Bath", "Oxford", "Dover",
];
const VEHICLES: &[&str] = &["train", "coach", "ferry", "flight"];
const PERSONS: &[&str] = &[
    "colleague",
    "son",
    "landlord",
    "partner",
    "manager",
    "neighbour",
];
const GREETINGS: &[&str] = &["", "Hi, ", "hello ", "um so ", "Hey, quick question: "];
const FILLERS: &[&str] = &[
    "",
    " please",
    " thanks",
    " Thanks in advance!",
    ", many thanks",
];

/// The generated question (`template` = number % 3) and its variant.
fn texts(slots: &[usize; 5], number: u32, variant: &Variant) -> (String, String) {
    let verb = VERBS[slots[0] % VERBS.len()];
    let object = OBJECTS[slots[1] % OBJECTS.len()];
    let from = PLACES[slots[2] % PLACES.len()];
    let mut to = PLACES[slots[3] % PLACES.len()];
    if to == from {
        to = PLACES[(slots[3] + 1) % PLACES.len()];
    }
    let vehicle = VEHICLES[slots[4] % VEHICLES.len()];
    let n = number % 500 + 1;
    let places = |a: &str, b: &str| format!("How long does the {vehicle} from {a} to {b} take?");
    let object_q = |owner: &str| format!("How do I {verb} my {owner}{object}?");
    let count_q = |k: u32| format!("Can I {verb} {k} {object} plans at once?");
    let negated_q = |not: &str| format!("Is it possible{not} to {verb} my {object} online?");
    match variant {
        Variant::Retyped {
            case,
            bare,
            greeting,
            filler,
        } => {
            let a = match number % 3 {
                0 => places(from, to),
                1 => object_q(""),
                _ => count_q(n),
            };
            let mut b = a.clone();
            if *bare {
                b = b.trim_end_matches('?').to_owned();
            }
            b = format!(
                "{}{b}{}",
                GREETINGS[greeting % GREETINGS.len()],
                FILLERS[filler % FILLERS.len()]
            );
            b = match case % 3 {
                1 => b.to_lowercase(),
                2 => b.to_uppercase(),
                _ => b,
            };
            (a, b)
        }
        Variant::SwapPlaces => (places(from, to), places(to, from)),
        Variant::Possessor(p) => (
            object_q(""),
            object_q(&format!("{}'s ", PERSONS[p % PERSONS.len()])),
        ),
        Variant::Number(m) => {
            let m = m % 500 + 1;
            let m = if m == n { m + 1 } else { m };
            (count_q(n), count_q(m))
        }
        Variant::Negated => (negated_q(""), negated_q(" not")),
    }
}

fn variant() -> BoxedStrategy<Variant> {
    prop_oneof![
        3 => (0u8..3, any::<bool>(), 0usize..8, 0usize..8).prop_map(|(case, bare, greeting, filler)| {
            Variant::Retyped { case, bare, greeting, filler }
        }),
        1 => Just(Variant::SwapPlaces),
        1 => (0usize..16).prop_map(Variant::Possessor),
        1 => any::<u32>().prop_map(Variant::Number),
        1 => Just(Variant::Negated),
    ]
    .boxed()
}

/// The target.
#[derive(Debug, Clone, Copy)]
pub struct SemanticGuard;

impl crate::Target for SemanticGuard {
    const NAME: &'static str = "semantic_guard";
    const ABOUT: &'static str = "the semantic guard and verifier: hostile text, swapped roles, possessors, numbers, negation, retyped repeats";
    type Input = Input;

    fn strategy() -> BoxedStrategy<Input> {
        prop_oneof![
            2 => (strategies::short_string(), strategies::short_string())
                .prop_map(|(a, b)| Input::Text(a, b)),
            1 => (strategies::hostile_string(), strategies::short_string())
                .prop_map(|(a, b)| Input::Text(a, b)),
            6 => (any::<[usize; 5]>(), any::<u32>(), variant())
                .prop_map(|(slots, number, variant)| Input::Pair { slots, number, variant }),
        ]
        .boxed()
    }

    fn check(input: &Input) -> Result<(), String> {
        let (a, b, variant) = match input {
            Input::Text(a, b) => (a.clone(), b.clone(), None),
            Input::Pair {
                slots,
                number,
                variant,
            } => {
                let (a, b) = texts(slots, *number, variant);
                (a, b, Some(variant))
            }
        };
        for config in [GuardConfig::default(), GuardConfig::strict()] {
            let ab = guard::check(&a, &b, config);
            let ba = guard::check(&b, &a, config);
            if ab != ba {
                return Err(format!("asymmetric: {a:?} / {b:?}: {ab:?} vs {ba:?}"));
            }
            let Some(variant) = variant else { continue };
            match (variant, ab) {
                (Variant::Retyped { .. }, Ok(Relation::Repeat)) => {}
                (Variant::Retyped { .. }, other) => {
                    return Err(format!("retyped, not a repeat: {a:?} / {b:?}: {other:?}"));
                }
                (_, Err(_)) => {}
                (v, ok) => {
                    return Err(format!("{v:?} passed the guard: {a:?} / {b:?}: {ok:?}"));
                }
            }
        }
        Ok(())
    }
}

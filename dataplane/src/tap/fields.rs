//! The fields usage is read from, typed and borrowed from the bytes: a
//! response's content is skipped by the parser and never built into a tree.
//! Every field is lenient: a value of an unexpected type reads as absent
//! instead of failing the whole message.
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One JSON message (an SSE event or a whole body), in any dialect: only the
/// members some dialect keeps usage, the model, an id or an error in.
#[derive(Default, serde::Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
pub struct Message<'a> {
    /// An Anthropic or Responses event type, or `"error"`.
    #[serde(rename = "type")]
    pub kind: Text<'a>,
    pub model: Text<'a>,
    /// Gemini's model.
    #[serde(rename = "modelVersion")]
    pub model_version: Text<'a>,
    pub id: Text<'a>,
    /// Gemini's id for the answer.
    #[serde(rename = "responseId")]
    pub response_id: Text<'a>,
    pub usage: Object<Counts>,
    /// Gemini's usage.
    #[serde(rename = "usageMetadata")]
    pub usage_metadata: Object<GeminiCounts>,
    pub error: Option<Error>,
    /// A Responses error event's own code.
    pub code: Label,
    /// Anthropic's `message_start` wraps the message.
    pub message: Object<Box<Message<'a>>>,
    /// Responses events wrap the response; Code Assist wraps Gemini's.
    pub response: Object<Box<Message<'a>>>,
}

impl<'a> Message<'a> {
    /// Parses one message; `None` when the bytes are not a JSON object.
    pub fn parse(bytes: &'a [u8]) -> Option<Message<'a>> {
        serde_json::from_slice::<Object<Message<'a>>>(bytes).ok()?.0
    }

    /// Parses an array of messages; members that are not objects are left out.
    pub fn parse_array(bytes: &'a [u8]) -> Option<Vec<Message<'a>>> {
        let members = serde_json::from_slice::<Vec<Object<Message<'a>>>>(bytes).ok()?;
        Some(members.into_iter().filter_map(|m| m.0).collect())
    }
}

/// Token counts as Anthropic, Chat Completions and Responses spell them.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub struct Counts {
    pub input_tokens: Count,
    pub output_tokens: Count,
    pub cache_creation_input_tokens: Count,
    pub cache_read_input_tokens: Count,
    pub cache_creation: Object<CacheCreation>,
    pub input_tokens_details: Object<Cached>,
    pub prompt_tokens: Count,
    pub completion_tokens: Count,
    pub prompt_tokens_details: Object<Cached>,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub struct CacheCreation {
    pub ephemeral_1h_input_tokens: Count,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub struct Cached {
    pub cached_tokens: Count,
}

/// Gemini's `usageMetadata`.
#[derive(Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GeminiCounts {
    pub prompt_token_count: Count,
    pub tool_use_prompt_token_count: Count,
    pub cached_content_token_count: Count,
    pub candidates_token_count: Count,
    pub thoughts_token_count: Count,
}

/// A non-null `error` member: an object with its kind, or anything else.
pub enum Error {
    Object(ErrorFields),
    Other,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub struct ErrorFields {
    #[serde(rename = "type")]
    pub kind: Label,
    pub status: Label,
    pub code: Label,
}

impl Error {
    pub fn is_object(&self) -> bool {
        matches!(self, Error::Object(_))
    }

    /// The error's kind: its `type`, `status` or `code`, else `"error"`.
    pub fn kind(&self) -> String {
        let Error::Object(e) = self else {
            return "error".into();
        };
        [&e.kind, &e.status, &e.code]
            .into_iter()
            .find_map(|l| l.0.clone())
            .unwrap_or_else(|| "error".into())
    }
}

impl<'de> Deserialize<'de> for Error {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Object::<ErrorFields>::deserialize(deserializer)?.0 {
            Some(fields) => Error::Object(fields),
            None => Error::Other,
        })
    }
}

/// A member that should hold an object; anything else reads as absent.
pub struct Object<T>(pub Option<T>);

impl<T> Default for Object<T> {
    fn default() -> Self {
        Object(None)
    }
}

impl<T> Object<T> {
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|t| Object(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Object<T>, A::Error> {
                Scalar::drain(seq).map(|_| Object(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
        }
        deserializer.deserialize_any(ObjectVisitor(PhantomData))
    }
}

/// A whole number of tokens, in any JSON spelling; anything else reads as absent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Count(pub Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Count(match Scalar::deserialize(deserializer)? {
            Scalar::Unsigned(n) => Some(n),
            Scalar::Signed(n) => u64::try_from(n).ok(),
            _ => None,
        }))
    }
}

/// A string, borrowed where it has no escapes; anything else reads as absent.
#[derive(Debug, Default)]
pub struct Text<'a>(pub Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Text(match Scalar::deserialize(deserializer)? {
            Scalar::Str(s) => Some(s),
            _ => None,
        }))
    }
}

/// A string or a whole number (error kinds come as both), as text.
#[derive(Debug, Default)]
pub struct Label(pub Option<String>);

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Label(match Scalar::deserialize(deserializer)? {
            Scalar::Str(s) => Some(s.into_owned()),
            Scalar::Unsigned(n) => Some(n.to_string()),
            Scalar::Signed(n) => Some(n.to_string()),
            Scalar::Other => None,
        }))
    }
}

/// Any JSON value, kept only when it is a string or a whole number.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Unsigned(u64),
    Signed(i64),
    Other,
}

impl Scalar<'_> {
    fn drain<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ScalarVisitor<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Str(Cow::Owned(s.to_string())))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Unsigned(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Signed(n))
            }
            /// `12.0` and `1.2e1` are spellings of 12; `2.5` is no count.
            fn visit_f64<E: de::Error>(self, f: f64) -> Result<Scalar<'a>, E> {
                const EXACT: f64 = (1u64 << 53) as f64;
                Ok(if f.fract() == 0.0 && (0.0..=EXACT).contains(&f) {
                    Scalar::Unsigned(f as u64)
                } else {
                    Scalar::Other
                })
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'a>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar<'a>, A::Error> {
                Scalar::drain(seq).map(|_| Scalar::Other)
            }
        }
        deserializer.deserialize_any(ScalarVisitor(PhantomData))
    }
}

//! Enums that travel as fixed strings (in the database, the API, the
//! snapshot): one definition gives the names, parsing with the API's own
//! refusal message, serde, and (with the `schema` feature) the OpenAPI schema.

/// Defines `enum $name` whose variants are written as the given strings.
/// `$refusal` is the message a value outside them is refused with.
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident refused $refusal:literal {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = &'static str;
            fn from_str(s: &str) -> Result<$name, &'static str> {
                $name::parse(s).ok_or($refusal)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| serde::de::Error::custom($refusal))
            }
        }

        $crate::__named_enum_schema!($name, [$($text),+]);
    };
}

#[cfg(feature = "schema")]
#[doc(hidden)]
#[macro_export]
macro_rules! __named_enum_schema {
    ($name:ident, [$($text:literal),+]) => {
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

#[cfg(not(feature = "schema"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __named_enum_schema {
    ($name:ident, [$($text:literal),+]) => {};
}

#[cfg(test)]
mod tests {
    named_enum! {
        enum Colour refused "colour must be red or light-blue" {
            Red = "red",
            LightBlue = "light-blue",
        }
    }

    #[test]
    fn names_round_trip_and_others_are_refused_with_the_message() {
        for c in Colour::ALL {
            assert_eq!(Colour::parse(c.as_str()), Some(*c));
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(serde_json::from_str::<Colour>(&json).unwrap(), *c);
        }
        let err = serde_json::from_str::<Colour>("\"green\"").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("colour must be red or light-blue")
        );
        assert_eq!("light-blue".parse::<Colour>(), Ok(Colour::LightBlue));
    }
}

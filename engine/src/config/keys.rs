//! The keys of each section, taken from the section structs themselves
//! (the field names their derived `Deserialize` knows), and the "did you
//! mean" for a key that is not one of them.

/// The keys serde accepts for `T`: the field names its derived
/// `Deserialize` hands to `deserialize_struct`. Empty for a type that is
/// not a struct.
pub(super) fn keys_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    let mut keys: &'static [&'static str] = &[];
    let _ = T::deserialize(KeyCapture(&mut keys));
    keys
}

/// A deserializer that only records the field names of a struct.
struct KeyCapture<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for KeyCapture<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("keys taken"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// `key` as TOML writes it: bare (`message_size_max`), else quoted
/// (`"*.example.com"`).
pub(super) fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_string()
    } else {
        toml::Value::from(key).to_string()
    }
}

/// The candidate closest to `written`, if it is close enough to be a typo:
/// at most a third of its letters differ (transpositions count once), as
/// cargo and rustc suggest names.
pub(super) fn closest<'a>(written: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (written.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(written, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_far_ones_not() {
        let keys = ["message_size_max", "message_memory_max", "recipients_max"];
        assert_eq!(closest("mesage_size_max", &keys), Some("message_size_max"));
        assert_eq!(closest("message_szie_max", &keys), Some("message_size_max"));
        assert_eq!(closest("recipient_max", &keys), Some("recipients_max"));
        assert_eq!(closest("size", &keys), None);
        assert_eq!(closest("hostname", &keys), None);
    }
}

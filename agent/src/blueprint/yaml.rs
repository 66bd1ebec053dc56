//! A YAML text as JSON data, the form the schemas validate.
//!
//! Going through `serde_yaml::Value` loses integers beyond 64 bits: the parser reads one
//! that fits 128 bits as such and `serde_yaml::Value` refuses it, so a document YAML and
//! JSON both allow (`big: -577194621154988720128`) would not be read at all. Here such an
//! integer becomes the nearest floating-point number, as a larger one already does.
//! Mapping keys that are numbers or booleans become their text; a key that is null, a
//! sequence or a mapping, a repeated key and a tagged value are refused.

use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `text` as one YAML document and gives it as JSON data.
pub fn to_json(text: &str) -> Result<Value, String> {
    Json::deserialize(serde_yaml::Deserializer::from_str(text))
        .map(|json| json.0)
        .map_err(|error| error.to_string())
}

struct Json(Value);

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor).map(Json)
    }
}

struct JsonVisitor;

fn float(value: f64) -> Value {
    Number::from_f64(value).map_or(Value::Null, Value::Number)
}

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("YAML data that JSON can hold")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_i128<E>(self, value: i128) -> Result<Value, E> {
        Ok(match i64::try_from(value) {
            Ok(small) => Value::Number(small.into()),
            Err(_) => float(value as f64),
        })
    }

    fn visit_u128<E>(self, value: u128) -> Result<Value, E> {
        Ok(match u64::try_from(value) {
            Ok(small) => Value::Number(small.into()),
            Err(_) => float(value as f64),
        })
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(float(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Json(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let Json(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// A mapping key: a string, or a number or boolean as its text.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        match deserializer.deserialize_any(JsonVisitor)? {
            Value::String(text) => Ok(text),
            Value::Number(number) => Ok(number.to_string()),
            Value::Bool(boolean) => Ok(boolean.to_string()),
            other => Err(de::Error::custom(format!(
                "a mapping key must be a string, not {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::to_json;
    use serde_json::json;

    #[test]
    fn integers_beyond_64_bits_are_read_as_numbers() {
        let value = to_json("a: -577194621154988720128\nb: 18446744073709551616\nc: 7\n").unwrap();
        assert_eq!(value["a"], json!(-577194621154988720128.0_f64));
        assert_eq!(value["b"], json!(18446744073709551616.0_f64));
        assert_eq!(value["c"], json!(7));
    }

    #[test]
    fn keys_are_text_and_unique() {
        assert_eq!(
            to_json("1: a\ntrue: b\n\"\\U0001F600\": c\n").unwrap(),
            json!({"1": "a", "true": "b", "\u{1F600}": "c"})
        );
        assert!(to_json("a: 1\na: 2\n").is_err());
        assert!(to_json("? [1]\n: a\n").is_err());
        assert!(to_json("~: a\n").is_err());
    }
}

//! Test support: JSON written in any spelling the grammar allows (any
//! whitespace, key order, string escapes and number forms), chosen by a
//! small deterministic generator, for property tests of the parsers.
use serde_json::Value;

/// A small deterministic generator the spelling choices are drawn from.
pub struct Dice(pub u64);

impl Dice {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Writes `value` as JSON, choosing a spelling at every point the grammar allows.
pub fn spell(value: &Value, dice: &mut Dice, out: &mut String) {
    let ws = |dice: &mut Dice, out: &mut String| {
        let choices = ["", "", " ", "  ", "\t", "\n", "\r\n", " \n\t"];
        out.push_str(choices[dice.below(choices.len())]);
    };
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let n = n.as_u64().expect("whole numbers only");
            let forms = [
                n.to_string(),
                format!("{n}.0"),
                format!("{n}e0"),
                format!("{n}.00E+0"),
                // No leading zeros: 0 is "0" and only "0".
                if n == 0 {
                    "0e5".into()
                } else {
                    format!("{n}0e-1")
                },
            ];
            out.push_str(&forms[dice.below(forms.len())]);
        }
        Value::String(s) => spell_string(s, dice, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    ws(dice, out);
                    out.push(',');
                }
                ws(dice, out);
                spell(item, dice, out);
                ws(dice, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            for i in (1..members.len()).rev() {
                members.swap(i, dice.below(i + 1));
            }
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ws(dice, out);
                spell_string(k, dice, out);
                ws(dice, out);
                out.push(':');
                ws(dice, out);
                spell(v, dice, out);
                ws(dice, out);
            }
            out.push('}');
        }
    }
}

pub fn spell_string(s: &str, dice: &mut Dice, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str(if dice.chance(50) { "\\n" } else { "\\u000a" }),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            '/' if dice.chance(50) => out.push_str("\\/"),
            c if dice.chance(15) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    if dice.chance(50) {
                        out.push_str(&format!("\\u{unit:04X}"));
                    } else {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

//! What free text and names may hold. Control characters and Unicode format characters
//! (general category Cf: bidirectional overrides such as U+202E, zero-width spaces and
//! joiners, the BOM …) are refused, so a reason, comment or policy cannot display differently
//! from what was stored — in the CLI, Slack or an email (the "Trojan Source" class of
//! spoofing). Names are compared in Unicode normalization form C.

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// The first character `v` must not hold, with its position (in characters). `layout`
/// allows line breaks and tabs (source code such as Rego).
pub fn hidden_char(v: &str, layout: bool) -> Option<(usize, char)> {
    v.chars().enumerate().find(|(_, c)| {
        let allowed_layout = layout && matches!(c, '\n' | '\r' | '\t');
        !allowed_layout && (c.is_control() || c.general_category() == GeneralCategory::Format)
    })
}

/// Why `v` is refused, in the words the API and the CLI show, if it is.
pub fn hidden_reason(v: &str, layout: bool) -> Option<String> {
    hidden_char(v, layout).map(|(at, c)| {
        format!(
            "must not contain control or invisible formatting characters (U+{:04X} at character {}); retype the text without it",
            c as u32,
            at + 1
        )
    })
}

/// A name as jitsudo stores and compares it: NFC.
pub fn nfc(name: &str) -> String {
    name.nfc().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_and_control_characters_are_named_and_normal_text_passes() {
        for (text, code) in [
            ("approve\u{202E}txt.exe", 0x202E), // right-to-left override
            ("ok\u{200B}", 0x200B),             // zero-width space
            ("\u{FEFF}bom", 0xFEFF),
            ("a\u{2066}b", 0x2066), // left-to-right isolate
            ("tab\there", 0x9),
            ("bell\u{7}", 0x7),
        ] {
            let why = hidden_reason(text, false).unwrap_or_else(|| panic!("{text:?} passed"));
            assert!(why.contains(&format!("U+{code:04X}")), "{why}");
        }
        for ok in ["déploiement à chaud", "修复 prod", "emoji 🚀 ok", "a-b_c.d"] {
            assert_eq!(hidden_char(ok, false), None, "{ok}");
        }
        assert_eq!(hidden_char("package p\n\tallow := true\r\n", true), None);
        assert!(hidden_char("allow := \"\u{202E}\"", true).is_some());
    }

    #[test]
    fn names_are_nfc() {
        let decomposed = "cafe\u{301}";
        assert_eq!(nfc(decomposed), "caf\u{e9}");
        assert_eq!(nfc("plain"), "plain");
    }
}

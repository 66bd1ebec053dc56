//! A linear scan of a YAML text for the shapes that make a parser slow or a document
//! explode — deep nesting (`[[[[...`) and aliases (`*a` repeated `&a`) — before the YAML
//! parser sees it. No blueprint needs either in bulk; the parser's cost on them grows
//! faster than the text, so a small body could otherwise hold a CPU for a minute.
//!
//! The scan over-counts rather than under-counts: it does not know every YAML rule, so
//! anything that might open a level or be an alias counts as one.

/// Deepest nesting of mappings and sequences a blueprint may have.
pub const MAX_DEPTH: usize = 32;
/// Most anchors and aliases (`&name`, `*name`) a blueprint may use.
pub const MAX_ALIASES: usize = 64;

/// Why a text was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("the blueprint nests deeper than {MAX_DEPTH} levels (at line {line})")]
    TooDeep { line: usize },
    #[error("the blueprint uses more than {MAX_ALIASES} YAML anchors and aliases")]
    TooManyAliases,
}

/// Checks `yaml` against [`MAX_DEPTH`] and [`MAX_ALIASES`] in one pass.
pub fn check(yaml: &str) -> Result<(), ShapeError> {
    let mut scan = Scan::default();
    for (index, line) in yaml.lines().enumerate() {
        scan.line(line)
            .map_err(|()| ShapeError::TooDeep { line: index + 1 })?;
        if scan.aliases > MAX_ALIASES {
            return Err(ShapeError::TooManyAliases);
        }
    }
    Ok(())
}

#[derive(Default)]
struct Scan {
    /// Indentation of each open block level.
    blocks: Vec<usize>,
    /// Open `[` and `{`.
    flow: usize,
    /// Inside a quoted scalar that goes on past the line's end.
    quote: Option<u8>,
    /// Indentation of the key whose block scalar (`|`, `>`) is being skipped.
    block_scalar: Option<usize>,
    aliases: usize,
}

impl Scan {
    /// Takes one line; `Err` once the nesting is too deep.
    fn line(&mut self, line: &str) -> Result<(), ()> {
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|&&b| b == b' ').count();
        if let Some(owner) = self.block_scalar {
            if indent > owner || line.trim().is_empty() {
                return Ok(());
            }
            self.block_scalar = None;
        }
        if self.quote.is_none() && self.flow == 0 {
            self.open_blocks(bytes, indent);
        }
        self.tokens(&bytes[indent..]);
        if self.blocks.len() + self.flow > MAX_DEPTH {
            return Err(());
        }
        if self.quote.is_none() && self.flow == 0 && opens_block_scalar(line) {
            self.block_scalar = Some(indent);
        }
        Ok(())
    }

    /// Block levels: one per indentation deeper than the enclosing one, and one per
    /// compact `- ` entry (`- - - x` opens three).
    fn open_blocks(&mut self, bytes: &[u8], indent: usize) {
        let rest = &bytes[indent..];
        if rest.is_empty() || rest[0] == b'#' {
            return;
        }
        while self.blocks.last().is_some_and(|&open| open >= indent) {
            self.blocks.pop();
        }
        self.blocks.push(indent);
        let mut column = indent;
        while bytes.get(column) == Some(&b'-') && bytes.get(column + 1).is_none_or(|&b| b == b' ') {
            column += 1;
            column += bytes[column..].iter().take_while(|&&b| b == b' ').count();
            self.blocks.push(column);
        }
    }

    /// Flow brackets, quotes, comments, anchors and aliases of the rest of a line.
    fn tokens(&mut self, rest: &[u8]) {
        let mut previous = b' ';
        let mut index = 0;
        while index < rest.len() {
            let byte = rest[index];
            match self.quote {
                Some(b'"') if byte == b'\\' => index += 1,
                Some(quote) if byte == quote => self.quote = None,
                Some(_) => {}
                None => match byte {
                    b'#' if previous == b' ' || previous == b'\t' => return,
                    b'"' | b'\'' if starts_token(previous) => self.quote = Some(byte),
                    b'[' | b'{' => self.flow += 1,
                    b']' | b'}' => self.flow = self.flow.saturating_sub(1),
                    b'&' | b'*' if starts_token(previous) => self.aliases += 1,
                    _ => {}
                },
            }
            previous = byte;
            index += 1;
        }
    }
}

/// Whether a byte may stand before the start of a YAML token.
fn starts_token(previous: u8) -> bool {
    matches!(previous, b' ' | b'\t' | b'[' | b'{' | b',' | b':' | b'-')
}

/// `key: |`, `- >-`, `run: |2`: the lines after it, more indented, are text.
fn opens_block_scalar(line: &str) -> bool {
    let value = line.trim_end();
    let Some(position) = value.rfind(['|', '>']) else {
        return false;
    };
    let indicator = &value[position + 1..];
    let before = value[..position].trim_end();
    indicator
        .bytes()
        .all(|b| b == b'-' || b == b'+' || b.is_ascii_digit())
        && (before.is_empty() || before.ends_with(':') || before.ends_with('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blueprints_as_written_pass() {
        let yaml = "name: metering\nimages:\n  - name: reader\n    image: motey/meter-reader:latest\n    command: [\"run\", \"--probe\", \"/dev/ttyUSB0\"]\n    env: { A: \"[[[[\", B: '{{{{' } # [[[[ in a comment\n    ports: [\"8080:80\", 5000]\n";
        assert_eq!(check(yaml), Ok(()));
    }

    #[test]
    fn block_scalars_are_text() {
        let mut yaml = String::from("name: s\nscript: |\n");
        for depth in 0..100 {
            yaml.push_str(&format!("{}[[[[ {{\n", " ".repeat(2 + depth)));
        }
        yaml.push_str("images: []\n");
        assert_eq!(check(&yaml), Ok(()));
    }

    #[test]
    fn a_flow_bomb_is_refused_at_its_line() {
        let yaml = format!("name: s\nimages: {}", "[".repeat(200_000));
        assert_eq!(check(&yaml), Err(ShapeError::TooDeep { line: 2 }));
    }

    #[test]
    fn deep_blocks_and_compact_sequences_count() {
        let indented: String = (0..40)
            .map(|depth| format!("{}k{depth}:\n", " ".repeat(depth)))
            .collect();
        assert!(matches!(check(&indented), Err(ShapeError::TooDeep { .. })));
        let compact = format!("{}x\n", "- ".repeat(40));
        assert!(matches!(check(&compact), Err(ShapeError::TooDeep { .. })));
        let fine = format!("{}x\n", "- ".repeat(10));
        assert_eq!(check(&fine), Ok(()));
    }

    #[test]
    fn an_alias_bomb_is_refused() {
        let mut yaml = String::from("a: &a [x, x]\n");
        for level in 1..40 {
            yaml.push_str(&format!(
                "a{level}: &a{level} [*a{}, *a{}]\n",
                level - 1,
                level - 1
            ));
        }
        assert_eq!(check(&yaml), Err(ShapeError::TooManyAliases));
    }

    #[test]
    fn quotes_hide_brackets_and_stars() {
        let yaml = format!(
            "cmd: \"{}\"\nglob: '{}'\n",
            "[*&".repeat(500),
            "{*".repeat(500)
        );
        assert_eq!(check(&yaml), Ok(()));
    }
}

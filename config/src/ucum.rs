//! A UCUM syntax check for the units technicians write into code maps.
//!
//! [`is_valid`] parses a unit expression by the grammar of the Unified Code for Units of
//! Measure (case-sensitive form): terms joined by `.` and `/`, a leading `/`, parentheses,
//! exponents, annotations in braces, integer factors, and metric prefixes on metric atoms.
//! The atom table holds the units a clinical laboratory meets (SI base and derived units,
//! liters, counts such as `10*9`, international and arbitrary units, `[pH]`, `mm[Hg]`, ...),
//! not all of UCUM's ~300: a unit outside it is *flagged* by `check-config` as a warning,
//! never refused, so a rare but valid unit still works.

/// Metric atoms: they take a prefix (`mg`, `umol`, `kU`).
const METRIC: &[&str] = &[
    "m",
    "s",
    "g",
    "rad",
    "K",
    "C",
    "cd",
    "mol",
    "sr",
    "Hz",
    "N",
    "Pa",
    "J",
    "W",
    "A",
    "V",
    "F",
    "Ohm",
    "S",
    "Wb",
    "Cel",
    "T",
    "H",
    "lm",
    "lx",
    "Bq",
    "Gy",
    "Sv",
    "l",
    "L",
    "ar",
    "t",
    "bar",
    "u",
    "eV",
    "pc",
    "gf",
    "Ky",
    "Gal",
    "dyn",
    "erg",
    "P",
    "Bi",
    "St",
    "Mx",
    "G",
    "Oe",
    "Gb",
    "sb",
    "Lmb",
    "ph",
    "Ci",
    "R",
    "RAD",
    "REM",
    "cal",
    "U",
    "[iU]",
    "[IU]",
    "eq",
    "osm",
    "kat",
    "m[Hg]",
    "m[H2O]",
    "B",
    "Np",
    "[CCID_50]",
    "[TCID_50]",
    "[EID_50]",
    "[PFU]",
    "[FFU]",
    "[CFU]",
    "[BAU]",
    "[AU]",
    "[PNU]",
    "[Lf]",
    "[D'ag'U]",
    "[FEU]",
    "[ELU]",
    "[EU]",
    "b",
    "[arb'U]",
    "g%",
];

/// Atoms without prefixes.
const NON_METRIC: &[&str] = &[
    "10*",
    "10^",
    "[pi]",
    "%",
    "[ppth]",
    "[ppm]",
    "[ppb]",
    "[pptr]",
    "min",
    "h",
    "d",
    "a",
    "wk",
    "mo",
    "a_t",
    "a_j",
    "a_g",
    "mo_s",
    "mo_j",
    "mo_g",
    "deg",
    "gon",
    "'",
    "''",
    "[in_i]",
    "[ft_i]",
    "[lb_av]",
    "[oz_av]",
    "[degF]",
    "[pH]",
    "[HPF]",
    "[LPF]",
    "[USP'U]",
    "[GPL'U]",
    "[MPL'U]",
    "[APL'U]",
    "[beth'U]",
    "[anti'Xa'U]",
    "[todd'U]",
    "[dye'U]",
    "[smgy'U]",
    "[bdsk'U]",
    "[ka'U]",
    "[knk'U]",
    "[mclg'U]",
    "[tb'U]",
    "[hnsf'U]",
    "[hp'X]",
    "[hp'C]",
    "[kp'X]",
    "[kp'C]",
    "[drp]",
    "[S]",
    "[Ch]",
    "[mesh_i]",
    "[diop]",
    "[hp'M]",
    "[hp'Q]",
    "[kp'M]",
    "[kp'Q]",
    "[iU]",
    "[Amb'a'1'U]",
    "[MET]",
    "[wood'U]",
    "[srs]",
    "[sft_i]",
];

/// Prefixes, longest first so `da` wins over `d`.
const PREFIXES: &[&str] = &[
    "da", "Ki", "Mi", "Gi", "Ti", "Y", "Z", "E", "P", "T", "G", "M", "k", "h", "d", "c", "m", "u",
    "n", "p", "f", "a", "z", "y",
];

/// True when `unit` is a UCUM expression made of known atoms (see the module doc).
pub fn is_valid(unit: &str) -> bool {
    let b = unit.as_bytes();
    if b.is_empty() || unit.chars().any(|c| c.is_whitespace() || !c.is_ascii()) {
        return false;
    }
    let mut p = Parser { b, i: 0 };
    p.main_term() && p.i == b.len()
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// mainTerm := '/' term | term
    fn main_term(&mut self) -> bool {
        if self.peek() == Some(b'/') {
            self.i += 1;
        }
        self.term()
    }

    /// term := component (('.' | '/') component)*
    fn term(&mut self) -> bool {
        if !self.component() {
            return false;
        }
        while matches!(self.peek(), Some(b'.' | b'/')) {
            self.i += 1;
            if !self.component() {
                return false;
            }
        }
        true
    }

    /// component := annotatable annotation? | annotation | factor | '(' term ')'
    fn component(&mut self) -> bool {
        match self.peek() {
            Some(b'{') => self.annotation(),
            Some(b'(') => {
                self.i += 1;
                if !self.term() || self.peek() != Some(b')') {
                    return false;
                }
                self.i += 1;
                true
            }
            Some(c)
                if c.is_ascii_digit()
                    && !self.b[self.i..].starts_with(b"10*")
                    && !self.b[self.i..].starts_with(b"10^") =>
            {
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
                true
            }
            Some(_) => {
                if !self.annotatable() {
                    return false;
                }
                if self.peek() == Some(b'{') {
                    return self.annotation();
                }
                true
            }
            None => false,
        }
    }

    fn annotation(&mut self) -> bool {
        let Some(end) = self.b[self.i..].iter().position(|&c| c == b'}') else {
            return false;
        };
        let inner = &self.b[self.i + 1..self.i + end];
        if inner.contains(&b'{') {
            return false;
        }
        self.i += end + 1;
        true
    }

    /// annotatable := simpleUnit exponent?
    fn annotatable(&mut self) -> bool {
        // The longest run that can form a simple unit: up to a '.', '/', '{', '(', ')' or
        // an exponent (sign or digit) outside brackets.
        let start = self.i;
        let mut j = self.i;
        let mut depth = 0;
        while let Some(&c) = self.b.get(j) {
            match c {
                b'[' => depth += 1,
                b']' => depth -= 1,
                b'.' | b'/' | b'{' | b'(' | b')' if depth == 0 => break,
                b'+' | b'-' if depth == 0 => break,
                c if c.is_ascii_digit() && depth == 0 => {
                    // "10*" and "10^" are atoms; "m[H2O]" has a digit inside brackets.
                    if j == start
                        && (self.b[j..].starts_with(b"10*") || self.b[j..].starts_with(b"10^"))
                    {
                        j += 3;
                        continue;
                    }
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        if depth != 0 || j == start {
            return false;
        }
        let simple = std::str::from_utf8(&self.b[start..j]).unwrap_or("");
        if !simple_unit(simple) {
            return false;
        }
        self.i = j;
        // exponent := ('+' | '-')? digits
        if matches!(self.peek(), Some(b'+' | b'-')) {
            self.i += 1;
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return false;
            }
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        true
    }
}

fn simple_unit(s: &str) -> bool {
    if METRIC.contains(&s) || NON_METRIC.contains(&s) {
        return true;
    }
    PREFIXES
        .iter()
        .any(|p| s.strip_prefix(p).is_some_and(|atom| METRIC.contains(&atom)))
}

#[cfg(test)]
mod tests {
    use super::is_valid;

    #[test]
    fn common_lab_units_are_valid() {
        for u in [
            "mg/dL",
            "mmol/L",
            "g/dL",
            "U/L",
            "10*9/L",
            "10*12/L",
            "%",
            "fL",
            "pg",
            "umol/L",
            "mg/dl",
            "pg/mL",
            "ng/mL",
            "[IU]/L",
            "m[IU]/mL",
            "mm[Hg]",
            "s",
            "mm/h",
            "/uL",
            "10*3/uL",
            "meq/L",
            "mosm/kg",
            "{ratio}",
            "mL/min/{1.73_m2}",
            "kU/L",
            "nkat/L",
            "[pH]",
            "/[HPF]",
            "Cel",
            "mmol/mol",
            "10^9/L",
            "g/(24.h)",
            "mL/min/1.73.m2",
            "1",
            "kg.m-2",
            "[arb'U]/mL",
            "{titer}",
            "daL",
            "ug/L",
        ] {
            assert!(is_valid(u), "{u} should be valid");
        }
    }

    #[test]
    fn common_mistakes_are_flagged() {
        for u in [
            "", "x10^9/L", "IU/L", "mIU/mL", "µmol/L", "sec", "mg / dL", "mmHg", "10E9/L", "/",
            "mg/", "(mg", "{a", "mg//L", "cells/uL", "g/dL)", "[IU",
        ] {
            assert!(!is_valid(u), "{u:?} should be flagged");
        }
    }
}

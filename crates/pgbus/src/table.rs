//! A small renderer of aligned text tables for people; scripts use `--json` instead.
//!
//! Columns are separated by two spaces and padded to their widest cell, counted in
//! characters; numeric columns can be right-aligned. Cells are single-line: newlines and
//! tabs in a cell are shown as spaces.

/// A table being built row by row.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            right: vec![false; headers.len()],
            rows: Vec::new(),
        }
    }

    /// Right-aligns the columns at these indexes (counts, sizes).
    pub fn right_align(mut self, columns: &[usize]) -> Self {
        for &column in columns {
            if let Some(flag) = self.right.get_mut(column) {
                *flag = true;
            }
        }
        self
    }

    /// Adds a row; missing cells are blank, extra ones are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| one_line(&c)).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, one line per row after the header, each ending in a newline.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }

        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        let mut out = String::new();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - cell.chars().count();
                if self.right[i] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn one_line(cell: &str) -> String {
    cell.chars()
        .map(|c| {
            if c == '\n' || c == '\r' || c == '\t' {
                ' '
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn pads_columns_and_right_aligns_numbers() {
        let mut table = Table::new(&["NAME", "COUNT", "NOTE"]).right_align(&[1]);
        table.row(vec!["sales".into(), "7".into(), "ok".into()]);
        table.row(vec!["billing_2".into(), "1200".into(), String::new()]);
        assert_eq!(
            table.render(),
            "NAME       COUNT  NOTE\n\
             sales          7  ok\n\
             billing_2   1200\n"
        );
    }

    #[test]
    fn cells_stay_on_one_line() {
        let mut table = Table::new(&["A"]);
        table.row(vec!["two\nlines".into()]);
        assert_eq!(table.render(), "A\ntwo lines\n");
    }
}

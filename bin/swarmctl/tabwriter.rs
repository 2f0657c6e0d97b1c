//! Elastic tabstops with the semantics of Go's `text/tabwriter` (flags 0, pad char ' '), which
//! every swarmctl table and inspect summary relies on for its exact spacing (spec 1.1 "Tables").
//!
//! A line is a list of cells separated by '\t'; every cell but the last is tab-terminated. A
//! column's width is computed per block of consecutive lines that have a tab-terminated cell in
//! that column: `max(minwidth, widest cell + padding)`. The last cell of a line is never padded,
//! except an empty one that falls inside a column block (Go pads it, leaving trailing spaces).
//! A line without any tab ends the formatting context ("flush"), so alignment may change there.

/// Buffers lines and renders them aligned.
pub struct TabWriter {
    minwidth: usize,
    padding: usize,
    /// Finished segments (everything before the last tab-less line).
    out: String,
    /// Lines of the current segment, split into cells.
    lines: Vec<Vec<String>>,
}

impl TabWriter {
    /// A writer like Go's `tabwriter.NewWriter(w, minwidth, tabwidth, padding, ' ', 0)`;
    /// `tabwidth` only matters for tab padding, which swarmctl never uses.
    pub fn new(minwidth: usize, _tabwidth: usize, padding: usize) -> Self {
        TabWriter {
            minwidth,
            padding,
            out: String::new(),
            lines: Vec::new(),
        }
    }

    /// Adds one line: cells separated by '\t', without the trailing '\n'.
    pub fn line(&mut self, s: impl AsRef<str>) {
        let s = s.as_ref();
        let cells: Vec<String> = s.split('\t').map(str::to_string).collect();
        let single = cells.len() == 1;
        self.lines.push(cells);
        if single {
            // Go flushes after a line with a single cell: it cannot affect later lines.
            self.flush();
        }
    }

    /// The aligned text; every line ends with '\n'.
    pub fn render(mut self) -> String {
        self.flush();
        self.out
    }

    fn flush(&mut self) {
        let lines = std::mem::take(&mut self.lines);
        let mut widths = Vec::new();
        self.format(&lines, &mut widths, 0, lines.len());
    }

    /// Formats lines `[line0, line1)` given the widths of the columns left of `widths.len()`.
    fn format(
        &mut self,
        lines: &[Vec<String>],
        widths: &mut Vec<usize>,
        line0: usize,
        line1: usize,
    ) {
        let column = widths.len();
        let mut start = line0;
        let mut this = line0;
        while this < line1 {
            if column + 1 >= lines[this].len() {
                this += 1;
                continue;
            }
            // A block of lines with a tab-terminated cell in `column` begins here.
            self.write_lines(lines, widths, start, this);
            start = this;
            let mut width = self.minwidth;
            while this < line1 && column + 1 < lines[this].len() {
                width = width.max(cell_width(&lines[this][column]) + self.padding);
                this += 1;
            }
            widths.push(width);
            self.format(lines, widths, start, this);
            widths.pop();
            start = this;
        }
        self.write_lines(lines, widths, start, line1);
    }

    fn write_lines(&mut self, lines: &[Vec<String>], widths: &[usize], line0: usize, line1: usize) {
        for line in &lines[line0..line1] {
            for (j, cell) in line.iter().enumerate() {
                self.out.push_str(cell);
                if let Some(&w) = widths.get(j) {
                    let pad = w.saturating_sub(cell_width(cell));
                    self.out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            self.out.push('\n');
        }
    }
}

/// Width of a cell as Go counts it: in runes.
fn cell_width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(minwidth: usize, padding: usize, input: &str, expected: &str) {
        let mut w = TabWriter::new(minwidth, 4, padding);
        for l in input.lines() {
            w.line(l);
        }
        assert_eq!(w.render(), expected, "input:\n{input}");
    }

    #[test]
    fn simple_table_pads_all_but_last_column() {
        check(
            0,
            2,
            "ID\tName\n--\t----\nabcdef\tdefault\n",
            "ID      Name\n--      ----\nabcdef  default\n",
        );
    }

    #[test]
    fn trailing_empty_cell_is_padded_inside_a_block() {
        // node ls: the last column is empty for workers but the column exists in the block,
        // so the empty last cell of a line is padded only if some line has a cell after it.
        check(0, 2, "a\tb\tccc\nxx\tyy\t\n", "a   b   ccc\nxx  yy  \n");
        // A line whose last cell is empty but not tab-terminated is not padded there.
        check(0, 2, "a\t\nbbb\tc\td\n", "a    \nbbb  c  d\n");
    }

    #[test]
    fn minwidth_wins_over_narrow_cells() {
        check(
            8,
            8,
            "ID\t: x\nName\t: y\n",
            "ID          : x\nName        : y\n",
        );
        check(4, 4, "a\tb\n", "a    b\n");
        check(8, 2, "a\tb\n", "a       b\n");
    }

    #[test]
    fn line_without_tab_ends_the_block() {
        // network inspect: "IPAM:" is followed by a tab, but a line with no tab at all resets
        // the alignment for the lines after it.
        check(
            8,
            8,
            "ID\t: k\nOptions:\t\n    long.option.name = 1\nIPAM:\t\n  Driver:\t\n",
            "ID              : k\nOptions:        \n    long.option.name = 1\nIPAM:            \n  Driver:        \n",
        );
    }

    #[test]
    fn blocks_split_on_lines_with_fewer_cells() {
        // Column 1 forms two blocks separated by a line that has no tab-terminated cell there.
        check(
            0,
            1,
            "a\tbbbbbb\tc\nd\te\nf\tg\th\n",
            "a bbbbbb c\nd e\nf g h\n",
        );
    }

    #[test]
    fn widths_count_runes_not_bytes() {
        check(0, 1, "é\tx\nab\ty\n", "é  x\nab y\n");
    }

    #[test]
    fn empty_input_renders_nothing() {
        assert_eq!(TabWriter::new(0, 4, 2).render(), "");
    }
}

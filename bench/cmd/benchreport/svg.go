package main

import (
	"bytes"
	"fmt"
	"html"
	"math"
)

// barChart is a grouped bar chart: one group per label, one bar per
// series in each.
type barChart struct {
	Title  string
	Unit   string
	Series []string
	Labels []string
	Values [][]float64 // [label][series]
}

var palette = []string{"#9aa5b1", "#1f6feb", "#d29922", "#2da44e"}

// svg draws the chart, with a value over each bar and a legend.
func (c barChart) svg() []byte {
	const (
		left, right, top, bottom = 60.0, 20.0, 50.0, 60.0
		barW, gap                = 30.0, 44.0
		plotH                    = 240.0
	)
	groupW := barW*float64(len(c.Series)) + gap
	width := left + right + groupW*float64(len(c.Labels))
	if width < 360 {
		width = 360
	}
	height := top + plotH + bottom
	max := 0.0
	for _, vs := range c.Values {
		for _, v := range vs {
			max = math.Max(max, v)
		}
	}
	scale := niceCeil(max)
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="20" font-size="14" font-weight="bold">%s</text>`+"\n", left, html.EscapeString(c.Title))
	for i := 0; i <= 4; i++ {
		v := scale * float64(i) / 4
		y := top + plotH - plotH*float64(i)/4
		fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#e1e4e8"/>`+"\n", left, width-right, y, y)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+4, format(v))
	}
	for g, label := range c.Labels {
		x0 := left + gap/2 + groupW*float64(g)
		for s := range c.Series {
			if g >= len(c.Values) || s >= len(c.Values[g]) {
				continue
			}
			v := c.Values[g][s]
			h := 0.0
			if scale > 0 {
				h = plotH * v / scale
			}
			x := x0 + barW*float64(s)
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", x, top+plotH-h, barW-2, h, palette[s%len(palette)])
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="9">%s</text>`+"\n", x+barW/2-1, top+plotH-h-3, format(v))
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n", x0+barW*float64(len(c.Series))/2, top+plotH+16, html.EscapeString(label))
	}
	for s, name := range c.Series {
		x := left + 110*float64(s)
		y := height - 18
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="10" height="10" fill="%s"/><text x="%.0f" y="%.0f">%s</text>`+"\n", x, y-9, palette[s%len(palette)], x+14, y, html.EscapeString(name))
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end" fill="#57606a">%s</text>`+"\n", width-right, height-9, html.EscapeString(c.Unit))
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func format(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

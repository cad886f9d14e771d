// Checks imm's witnessed checkpoint with golang.org/x/mod/sumdb/note (log signature) and
// transparency-dev/formats/note (cosignature/v1), and imm's tiles with
// golang.org/x/mod/sumdb/tlog, adapting only the tile path (Go's carries the height).
package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type dirTiles struct{ dir string }

func (d dirTiles) Height() int { return 8 }
func (d dirTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		p := strings.Replace(t.Path(), "tile/8/", "tile/", 1) // the only adaptation
		b, err := os.ReadFile(filepath.Join(d.dir, p))
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}
func (d dirTiles) SaveTiles([]tlog.Tile, [][]byte) {}

func must(err error) {
	if err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
}

func main() {
	dir := os.Args[1]
	read := func(n string) string { b, err := os.ReadFile(filepath.Join(dir, n)); must(err); return strings.TrimSpace(string(b)) }
	msg, err := os.ReadFile(filepath.Join(dir, "note.txt"))
	must(err)
	lv, err := note.NewVerifier(read("log.vkey"))
	must(err)
	wv, err := fnote.NewVerifierForCosignatureV1(read("witness.vkey"))
	must(err)
	n, err := note.Open(msg, note.VerifierList(lv, wv))
	must(err)
	for _, s := range n.Sigs {
		ts := ""
		if s.Name == wv.Name() {
			t, err := fnote.CoSigV1Timestamp(s)
			must(err)
			ts = " time " + strconv.FormatInt(t.Unix(), 10)
		}
		fmt.Printf("verified signature: %s%s\n", s.Name, ts)
	}
	lines := strings.Split(n.Text, "\n")
	size, err := strconv.ParseInt(lines[1], 10, 64)
	must(err)
	root, err := tlog.ParseHash(lines[2])
	must(err)
	hr := tlog.TileHashReader(tlog.Tree{N: size, Hash: root}, dirTiles{dir})
	th, err := tlog.TreeHash(size, hr)
	must(err)
	fmt.Printf("tree hash %d %s\n", size, hex.EncodeToString(th[:]))
	for _, a := range os.Args[2:] {
		idx, _ := strconv.ParseInt(a, 10, 64)
		p, err := tlog.ProveRecord(size, idx, hr)
		must(err)
		hs, err := hr.ReadHashes([]int64{tlog.StoredHashIndex(0, idx)})
		must(err)
		must(tlog.CheckRecord(p, size, root, idx, hs[0]))
		parts := []string{}
		for _, h := range p {
			parts = append(parts, hex.EncodeToString(h[:]))
		}
		fmt.Printf("proof %d %s %s\n", idx, hex.EncodeToString(hs[0][:]), strings.Join(parts, ","))
	}
}

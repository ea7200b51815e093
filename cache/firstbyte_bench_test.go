package cache

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"
)

// BenchmarkStreamFirstByte: the time to the first 4 KiB of a 256 MiB object
// from a source that answers at memory speed, in 8 MiB ranged reads as a
// mount makes them: what serving only verified bytes costs the first byte
// (chunk 0 downloaded and verified), without the network's share.
func BenchmarkStreamFirstByte(b *testing.B) {
	data := make([]byte, 256<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	sum := sha256.Sum256(data)
	sums := chunkSums(data, defaultChunkSize)
	c, err := Open(Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	buf := make([]byte, 4096)
	b.ResetTimer()
	for i := range b.N {
		obj := Object{ID: fmt.Sprint("fb", i), Size: int64(len(data)), SHA256: sum, Name: "x",
			Fetch: (&rangedSource{data: data}).fetch, ChunkSize: defaultChunkSize, Chunks: sums}
		h, err := c.OpenStream(context.Background(), obj)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := h.ReadAt(context.Background(), buf, 0); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := h.Wait(); err != nil {
			b.Fatal(err)
		}
		h.Close()
		c.drop(obj.ID)
		b.StartTimer()
	}
}

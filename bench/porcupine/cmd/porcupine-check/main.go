// porcupine-check: checks a Machi-py JSON Lines history (docs/history.md) with
// porcupine (github.com/anishathalye/porcupine), for `machi-harness bench-check
// --compare-porcupine`. Models: register, cas-register, kv (P-compositional by key).
//
// Conventions, the same as harness/checker/models.py: fail ops never took effect and
// are dropped; crashed (info or never completed) reads are dropped; crashed writes,
// cas and appends may take effect at any time after their invocation or never (they
// return "at infinity", after every other event); a register starts at null, a kv key
// at "" (a kv read of null reads ""). Times are event indexes.
//
// Prints one JSON object: {"result": "Ok"|"Illegal"|"Unknown", "ops", "partitions",
// "parse_cpu_s", "check_cpu_s", "check_wall_s"}. Exit status 0 whatever the verdict,
// 254 on bad input.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/anishathalye/porcupine"
)

type event struct {
	Index   *int64          `json:"index"`
	Process json.RawMessage `json:"process"`
	Type    string          `json:"type"`
	F       string          `json:"f"`
	Key     json.RawMessage `json:"key"`
	Value   json.RawMessage `json:"value"`
}

// input: what was asked; values are canonical JSON text (compared as strings).
type input struct {
	op      byte // 'r' read, 'w' write, 'c' cas, 'a' append
	key     string
	value   string // write / append value, cas new value
	old     string // cas expected value
	crashed bool
}

type output struct {
	value string // read result
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "porcupine-check: "+format+"\n", args...)
	os.Exit(254)
}

func canon(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "null"
	}
	var v interface{}
	if err := json.Unmarshal(raw, &v); err != nil {
		die("bad value %s: %v", string(raw), err)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func kvString(raw json.RawMessage) string {
	c := canon(raw)
	if c == "null" {
		return `""`
	}
	if len(c) == 0 || c[0] != '"' {
		die("kv values must be strings, got %s", c)
	}
	return c
}

func casPair(raw json.RawMessage) (string, string) {
	var pair []json.RawMessage
	if err := json.Unmarshal(raw, &pair); err != nil || len(pair) != 2 {
		die("cas value must be [old, new], got %s", string(raw))
	}
	return canon(pair[0]), canon(pair[1])
}

// appendJSON concatenates two JSON strings ("ab" + "c" = "abc").
func appendJSON(a, b string) string {
	return a[:len(a)-1] + b[1:]
}

func main() {
	modelName := flag.String("model", "register", "register | cas-register | kv")
	timeoutS := flag.Float64("timeout", 0, "check timeout in seconds (0 = none)")
	flag.Parse()
	if flag.NArg() != 1 {
		die("usage: porcupine-check --model M HISTORY.jsonl")
	}
	kv := *modelName == "kv"
	allowCas := *modelName == "cas-register" || kv
	if !kv && *modelName != "register" && *modelName != "cas-register" {
		die("unknown model %q", *modelName)
	}
	cpu0 := cpuSeconds()
	fh, err := os.Open(flag.Arg(0))
	if err != nil {
		die("%v", err)
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	type pending struct {
		ev    event
		index int64
	}
	open := map[string]pending{}
	var ops []porcupine.Operation
	var crashed []porcupine.Operation
	var n int64
	var maxIndex int64
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		var ev event
		if err := json.Unmarshal(line, &ev); err != nil {
			die("line %d: %v", n+1, err)
		}
		idx := n
		if ev.Index != nil {
			idx = *ev.Index
		}
		n++
		if idx > maxIndex {
			maxIndex = idx
		}
		proc := string(ev.Process)
		if ev.Type == "invoke" {
			open[proc] = pending{ev, idx}
			continue
		}
		inv, ok := open[proc]
		if !ok {
			continue // nemesis or a completion without an invocation
		}
		delete(open, proc)
		if ev.Type == "fail" {
			continue
		}
		in, keep := makeInput(inv.ev, kv, allowCas)
		if !keep {
			continue
		}
		if ev.Type == "info" {
			if in.op == 'r' {
				continue
			}
			in.crashed = true
			crashed = append(crashed, porcupine.Operation{Input: in, Call: inv.index})
			continue
		}
		out := output{}
		if in.op == 'r' {
			if kv {
				out.value = kvString(ev.Value)
			} else {
				out.value = canon(ev.Value)
			}
		}
		ops = append(ops, porcupine.Operation{Input: in, Call: inv.index, Output: out, Return: idx})
	}
	if err := sc.Err(); err != nil {
		die("%v", err)
	}
	for _, p := range open { // never completed: crashed
		in, keep := makeInput(p.ev, kv, allowCas)
		if keep && in.op != 'r' {
			in.crashed = true
			crashed = append(crashed, porcupine.Operation{Input: in, Call: p.index})
		}
	}
	for i := range crashed {
		crashed[i].Return = maxIndex + 1 + int64(i)
		crashed[i].Output = output{}
	}
	ops = append(ops, crashed...)
	init := "null"
	if kv {
		init = `""`
	}
	model := porcupine.Model{
		Init: func() interface{} { return init },
		Step: func(state, inp, outp interface{}) (bool, interface{}) {
			st := state.(string)
			in := inp.(input)
			switch in.op {
			case 'r':
				return st == outp.(output).value, st
			case 'w':
				return true, in.value
			case 'a':
				return true, appendJSON(st, in.value)
			default: // cas
				if st == in.old {
					return true, in.value
				}
				return in.crashed, st // a crashed cas may have failed without effect
			}
		},
	}
	partitions := 1
	if kv {
		model.Partition = func(history []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[string][]porcupine.Operation{}
			var keys []string
			for _, op := range history {
				k := op.Input.(input).key
				if _, seen := byKey[k]; !seen {
					keys = append(keys, k)
				}
				byKey[k] = append(byKey[k], op)
			}
			out := make([][]porcupine.Operation, 0, len(keys))
			for _, k := range keys {
				out = append(out, byKey[k])
			}
			partitions = len(out)
			return out
		}
	}
	cpu1 := cpuSeconds()
	t0 := time.Now()
	res := porcupine.MachiCheckOperations(model, ops, time.Duration(*timeoutS*float64(time.Second)))
	wall := time.Since(t0).Seconds()
	cpu2 := cpuSeconds()
	out, _ := json.Marshal(map[string]interface{}{
		"result":       string(res),
		"ops":          len(ops),
		"partitions":   partitions,
		"parse_cpu_s":  cpu1 - cpu0,
		"check_cpu_s":  cpu2 - cpu1,
		"check_wall_s": wall,
	})
	fmt.Println(string(out))
}

func makeInput(ev event, kv, allowCas bool) (input, bool) {
	in := input{}
	if kv {
		in.key = canon(ev.Key)
	}
	switch ev.F {
	case "read":
		in.op = 'r'
	case "write":
		in.op = 'w'
		if kv {
			in.value = kvString(ev.Value)
		} else {
			in.value = canon(ev.Value)
		}
	case "cas":
		if !allowCas {
			die("the register model has no cas")
		}
		in.op = 'c'
		in.old, in.value = casPair(ev.Value)
		if kv {
			in.old, in.value = kvString(json.RawMessage(in.old)), kvString(json.RawMessage(in.value))
		}
	case "append":
		if !kv {
			die("only kv has append")
		}
		in.op = 'a'
		in.value = kvString(ev.Value)
	default:
		return in, false
	}
	return in, true
}

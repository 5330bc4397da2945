module machi-py/bench/porcupine

go 1.18

require github.com/anishathalye/porcupine v0.0.0

replace github.com/anishathalye/porcupine => ./third_party/porcupine

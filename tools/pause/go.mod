// The pause image's one binary: no dependencies outside the standard library.
module securekeys.io/tools/pause

go 1.26.0

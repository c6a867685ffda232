// Package slogadapter lets goka and sarama, which log through Print-style
// interfaces (goka.Logger, sarama.StdLogger), write to a *slog.Logger.
package slogadapter

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// Logger implements goka.Logger and sarama.StdLogger on top of a slog.Logger.
// Every line is logged at Level with the message trimmed of its newline.
type Logger struct {
	L     *slog.Logger
	Level slog.Level
}

// New returns a Logger writing to l at level.
func New(l *slog.Logger, level slog.Level) *Logger { return &Logger{L: l, Level: level} }

func (a *Logger) log(msg string) {
	a.L.Log(context.Background(), a.Level, strings.TrimRight(msg, "\n"))
}

// Print implements goka.Logger and sarama.StdLogger.
func (a *Logger) Print(v ...any) { a.log(fmt.Sprint(v...)) }

// Println implements goka.Logger and sarama.StdLogger.
func (a *Logger) Println(v ...any) { a.log(fmt.Sprintln(v...)) }

// Printf implements goka.Logger and sarama.StdLogger.
func (a *Logger) Printf(format string, v ...any) { a.log(fmt.Sprintf(format, v...)) }

// Package procstat reads a Linux process's CPU time and parent from
// /proc/<pid>/stat, for the benchmarks that report what each process of the
// stack spent.
package procstat

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is the kernel's USER_HZ, the unit of /proc/<pid>/stat's times.
const clockTicks = 100

// Stat is what the benchmarks read of /proc/<pid>/stat.
type Stat struct {
	// PPID is the parent's pid.
	PPID int
	// CPU is the process's user and system time (utime + stime).
	CPU time.Duration
	// ChildrenCPU is the user and system time of its children that ended
	// and were waited for (cutime + cstime): PostgreSQL's backends, counted
	// by the postmaster once they exit.
	ChildrenCPU time.Duration
}

// Read reads pid's stat.
func Read(pid int) (Stat, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Stat{}, err
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: state, ppid, ... utime (index 11), stime, cutime, cstime.
	end := strings.LastIndexByte(string(raw), ')')
	if end < 0 {
		return Stat{}, fmt.Errorf("procstat: /proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(raw[end+1:]))
	if len(f) < 15 {
		return Stat{}, fmt.Errorf("procstat: /proc/%d/stat: %d fields", pid, len(f))
	}
	var n [15]int64
	for _, i := range []int{1, 11, 12, 13, 14} {
		if n[i], err = strconv.ParseInt(f[i], 10, 64); err != nil {
			return Stat{}, fmt.Errorf("procstat: /proc/%d/stat field %d: %w", pid, i+3, err)
		}
	}
	ticks := func(t int64) time.Duration { return time.Duration(t) * time.Second / clockTicks }
	return Stat{PPID: int(n[1]), CPU: ticks(n[11] + n[12]), ChildrenCPU: ticks(n[13] + n[14])}, nil
}

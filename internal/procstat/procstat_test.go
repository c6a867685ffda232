package procstat

import (
	"os"
	"testing"
	"time"
)

func TestReadSelf(t *testing.T) {
	// Spend some CPU so that this process has a few ticks.
	deadline := time.Now().Add(50 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
		_ = x * x
	}
	st, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.PPID != os.Getppid() {
		t.Errorf("PPID %d, want %d", st.PPID, os.Getppid())
	}
	if st.CPU <= 0 {
		t.Errorf("CPU %s after spinning 50 ms", st.CPU)
	}
}

func TestReadMissing(t *testing.T) {
	if _, err := Read(1 << 30); err == nil {
		t.Error("no error for a pid that does not exist")
	}
}

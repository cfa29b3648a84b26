package userpilottest

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

// appendRecord appends a record as pgpilot's client writes it for the
// benchmarks' companies table.
func appendRecord(b []byte, id int) []byte {
	b = append(b, `{"company_id":"`...)
	b = strconv.AppendInt(b, int64(id), 10)
	b = append(b, `","metadata":{"created_at":"2024-01-01T`...)
	b = append(b, byte('0'+id%24/10), byte('0'+id%24%10))
	b = append(b, `:00:00Z","monthly_spend":`...)
	b = strconv.AppendInt(b, int64(id*12), 10)
	b = append(b, `.3400000000,"name":"Company `...)
	b = strconv.AppendInt(b, int64(id), 10)
	b = append(b, `","notes":null,"plan":"pro","seats":`...)
	b = strconv.AppendInt(b, int64(id%500), 10)
	b = append(b, `,"trial":`...)
	b = strconv.AppendBool(b, id%2 == 0)
	return append(b, "}}"...)
}

func benchRequest(method, path string, body []byte) *http.Request {
	r := httptest.NewRequest(method, path, bytes.NewReader(body))
	r.Header.Set("Authorization", "Token k")
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Accept", "application/json")
	r.Header.Set("X-API-Version", APIVersion)
	return r
}

// BenchmarkBulkRecord is the stand-in's CPU per record of a bulk job of
// 10,000 new companies: read, checked, kept, applied once the job is done
// (without the HTTP server around it; profiles are built when read, which
// this does not).
func BenchmarkBulkRecord(b *testing.B) {
	s := NewHandler(Options{APIKey: "k", BulkRecordsPerSecond: 1e12})
	const perJob = maxBulkRecords
	b.ReportAllocs()
	b.ResetTimer()
	next := 0
	var body []byte
	for done := 0; done < b.N; done += perJob {
		b.StopTimer()
		body = append(body[:0], `{"companies":[`...)
		for i := range perJob {
			if i > 0 {
				body = append(body, ',')
			}
			body = appendRecord(body, next)
			next++
		}
		body = append(body, `]}`...)
		req := benchRequest(http.MethodPost, bulkPath, body)
		b.StartTimer()
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		if w.Code != http.StatusAccepted {
			b.Fatalf("bulk answered %d: %s", w.Code, w.Body)
		}
		if got := s.Accepted(); got != next {
			b.Fatalf("accepted %d, want %d", got, next)
		}
	}
}

// BenchmarkIdentify is one real-time identify of a new company (without
// the HTTP server around it).
func BenchmarkIdentify(b *testing.B) {
	s := NewHandler(Options{APIKey: "k"})
	bodies := make([][]byte, b.N)
	for i := range bodies {
		bodies[i] = appendRecord(nil, i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		w := httptest.NewRecorder()
		s.ServeHTTP(w, benchRequest(http.MethodPost, identifyPath, bodies[i]))
		if w.Code != http.StatusAccepted {
			b.Fatalf("identify answered %d: %s", w.Code, w.Body)
		}
	}
}

// appendUserRecord appends a user record as pgpilot's client writes it in
// a bulk job of users: a flat company_id and a few keys.
func appendUserRecord(b []byte, id int) []byte {
	b = append(b, `{"user_id":"`...)
	b = strconv.AppendInt(b, int64(id), 10)
	b = append(b, `","company_id":"`...)
	b = strconv.AppendInt(b, int64(id/10), 10)
	b = append(b, `","metadata":{"created_at":"2024-01-01T00:00:00Z","email":"user`...)
	b = strconv.AppendInt(b, int64(id), 10)
	b = append(b, `@example.com","name":"User `...)
	b = strconv.AppendInt(b, int64(id), 10)
	b = append(b, `","open_conversations":`...)
	b = strconv.AppendInt(b, int64(id%7), 10)
	b = append(b, `,"role":"agent"`...)
	return append(b, "}}"...)
}

// BenchmarkBulkUserRecord is BenchmarkBulkRecord for a bulk job of
// 10,000 new users, each with its company.
func BenchmarkBulkUserRecord(b *testing.B) {
	s := NewHandler(Options{APIKey: "k", BulkRecordsPerSecond: 1e12})
	const perJob = maxBulkRecords
	b.ReportAllocs()
	b.ResetTimer()
	next := 0
	var body []byte
	for done := 0; done < b.N; done += perJob {
		b.StopTimer()
		body = append(body[:0], `{"users":[`...)
		for i := range perJob {
			if i > 0 {
				body = append(body, ',')
			}
			body = appendUserRecord(body, next)
			next++
		}
		body = append(body, `]}`...)
		req := benchRequest(http.MethodPost, userBulkPath, body)
		b.StartTimer()
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		if w.Code != http.StatusAccepted {
			b.Fatalf("bulk answered %d: %s", w.Code, w.Body)
		}
		if got := s.AcceptedUsers(); got != next {
			b.Fatalf("accepted %d users, want %d", got, next)
		}
	}
}

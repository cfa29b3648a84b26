package mapping

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/row"
)

func TestColumnNamesThatLookLikePersonalData(t *testing.T) {
	tests := []struct{ column, what string }{
		{"email", "an email address"},
		{"contact_email", "an email address"},
		{"ContactEmail", "an email address"},
		{"billing_e_mail", "an email address"},
		{"email_address", "an email address"},
		{"phone", "a phone number"},
		{"telephone", "a phone number"},
		{"phone_number", "a phone number"},
		{"mobile", "a phone number"},
		{"owner_mobile", "a phone number"},
		{"address", "a postal address"},
		{"billing_address", "a postal address"},
		{"ship_address", "a postal address"},
		{"street", "a postal address"},
		{"postal_code", "a postal address"},
		{"postcode", "a postal address"},
		{"zip", "a postal address"},
		{"zip_code", "a postal address"},
		{"zipcode", "a postal address"},
		{"birthday", "a date of birth"},
		{"date_of_birth", "a date of birth"},
		{"dob", "a date of birth"},
		{"ssn", "a national identity number"},
		{"national_id", "a national identity number"},
		{"social_security_number", "a national identity number"},
		{"passport_no", "a passport number"},
		{"ip", "an IP address"},
		{"ip_address", "an IP address"},
		{"ipAddress", "an IP address"},
		{"last_login_ip", "an IP address"},
		{"first_name", "a person's name"},
		{"firstName", "a person's name"},
		{"lastname", "a person's name"},
		{"owner_full_name", "a person's name"},
		{"contact_name", "a person's name"},
		{"surname", "a person's name"},
		{"Given Name", "a person's name"},
		// The company's own attributes.
		{"name", ""},
		{"company_name", ""},
		{"plan", ""},
		{"seats", ""},
		{"monthly_spend", ""},
		{"created_at", ""},
		{"domain", ""},
		{"email_domain", ""},
		{"industry", ""},
		{"website", ""},
		{"description", ""},
		{"shipping_zone", ""},
		{"automobile_count", ""},
		{"zipped_size", ""},
		{"trial", ""},
		{"notes", ""},
	}
	for _, tt := range tests {
		t.Run(tt.column, func(t *testing.T) {
			assert.Equal(t, tt.what, LooksPersonal(tt.column))
		})
	}
}

func TestPersonalDataByNameAndByTypeUnlessAcknowledged(t *testing.T) {
	c := Companies{Metadata: []Field{
		{Key: "name", Column: "name", Line: 5},
		{Key: "contact", Column: "contact_email", Line: 6},
		{Key: "reach", Column: "reach", Line: 7},         // a domain named email
		{Key: "seen_from", Column: "last_seen", Line: 8}, // inet
		{Key: "phone", Column: "phone", Line: 9, PII: true},
		{Key: "plan", Column: "plan", Line: 10},
		{Key: "tel", Column: "tel", Line: 11, Type: TypeString}, // a schema-qualified domain
	}}
	cols := []row.Column{
		{Name: "name", TypeName: "text"}, {Name: "contact_email", TypeName: "text"}, {Name: "reach", TypeName: "email"},
		{Name: "last_seen", TypeName: "inet"}, {Name: "phone", TypeName: "text"}, {Name: "plan", TypeName: "character varying(20)"},
		{Name: "tel", TypeName: `crm."Phone_Number"`},
	}
	got := c.PersonalData(cols)
	require.Len(t, got, 4)
	assert.Equal(t, []string{"contact", "reach", "seen_from", "tel"}, []string{got[0].Key, got[1].Key, got[2].Key, got[3].Key})
	assert.Equal(t, "by its name", got[0].Because)
	assert.Equal(t, "an email address", got[1].What)
	assert.Equal(t, "by its type email", got[1].Because)
	assert.Equal(t, "an IP address", got[2].What)
	assert.Equal(t, "by its type Phone_Number", got[3].Because)
	assert.Equal(t, `p.yaml:6: metadata "contact": column "contact_email" looks like personal data (an email address, by its name); `+
		"Userpilot's API reference asks you to check with your legal and security teams before sending personal data as metadata",
		got[0].Problem("p.yaml"))
	assert.Equal(t, "once sending it is cleared, acknowledge it: contact: {column: contact_email, pii: true}; otherwise remove the key", got[0].Fix())
	assert.Equal(t, "once sending it is cleared, acknowledge it: tel: {column: tel, type: string, pii: true}; otherwise remove the key", got[3].Fix())
}

//! A throwaway certificate authority for TLS tests (rcgen): one CA and one host certificate.

/// (CA certificate, host certificate, host key) in PEM: a CA named `ca_name` signing one
/// certificate for `names` (IP addresses or DNS names, as subjectAltName).
pub fn make_pki(ca_name: &str, names: &[String]) -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let host_params = rcgen::CertificateParams::new(names.to_vec()).unwrap();
    let host_key = rcgen::KeyPair::generate().unwrap();
    let host = host_params.signed_by(&host_key, &ca, &ca_key).unwrap();
    (ca.pem(), host.pem(), host_key.serialize_pem())
}
